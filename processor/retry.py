"""Retries of the processor's calls, and what is failing now (read by `/readyz`).

Only infrastructure errors are retried (`ClickHouseUnavailable`, and `LogUnavailable`
where a call says so), with the one backoff policy (funnelstream/backoff.py). Anything
else, a `ClickHouseQueryError` or a bug, propagates and fails the processor loudly; its
supervisor restarts it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from funnelstream.backoff import BackoffPolicy, retry_forever
from funnelstream.clickhouse import ClickHouseUnavailable

T = TypeVar("T")


class Retrier:
    def __init__(self, policy: BackoffPolicy, log_unready_after_seconds: float) -> None:
        self.policy = policy
        self._log_unready_after = log_unready_after_seconds
        # Per call being retried now: why ClickHouse fails it (calls overlap: a rebalance's
        # state load runs beside the loop's batch write, and one succeeding must not clear
        # the other's problem); per log call ("start", "poll", "commit"): since when it
        # fails and why.
        self._clickhouse_problems: dict[str, str] = {}
        self._log_problems: dict[str, tuple[float, str]] = {}

    async def retry(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        retry_on: tuple[type[Exception], ...] = (ClickHouseUnavailable,),
        on_retry: Callable[[], object] | None = None,
    ) -> T:
        """Await `call()` until it succeeds, retrying only `retry_on` errors."""

        def retrying(exc: BaseException, delay: float) -> None:
            if isinstance(exc, ClickHouseUnavailable):
                self._clickhouse_problems[what] = f"{what} failing, retrying in {delay:.1f}s: {exc}"
            else:
                self.log_failed(what, exc)
            if on_retry is not None:
                on_retry()

        try:
            return await retry_forever(self.policy, what, call, retry_on, retrying)
        finally:
            # Succeeded, or gave up with an error that is not retried (the supervisor
            # shows that one): either way this call no longer retries.
            self._clickhouse_problems.pop(what, None)
            self._log_problems.pop(what, None)

    def log_failed(self, call: str, exc: BaseException) -> None:
        since = self._log_problems.get(call, (time.monotonic(), ""))[0]
        self._log_problems[call] = (since, f"{call} failing: {exc}")

    def log_ok(self, call: str) -> None:
        self._log_problems.pop(call, None)

    def problems(self) -> dict[str, str]:
        """ "clickhouse" while a read or write is being retried, "log" once a log call has
        failed for `log_unready_after_seconds` (shorter blips are ridden out)."""
        out = {}
        if self._clickhouse_problems:
            out["clickhouse"] = "; ".join(sorted(self._clickhouse_problems.values()))
        now = time.monotonic()
        long = [
            reason
            for since, reason in self._log_problems.values()
            if now - since >= self._log_unready_after
        ]
        if long:
            out["log"] = "; ".join(sorted(long))
        return out
