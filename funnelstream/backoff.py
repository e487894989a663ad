"""The one backoff policy: capped exponential delay between retries of a failing call.

Every retry in the service uses it: the processor's ClickHouse and log retries and the
supervisor's restarts of crashed background tasks (funnelstream/supervise.py). The delay
arithmetic and the retry loop are tenacity's, so the three processor loops and the
supervisor cannot drift apart again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """`initial_seconds` after the first failure, doubling up to `max_seconds`."""

    initial_seconds: float = 0.2
    max_seconds: float = 10.0
    wait: wait_exponential = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "wait",
            wait_exponential(
                multiplier=self.initial_seconds, min=self.initial_seconds, max=self.max_seconds
            ),
        )

    def delay(self, failures: int) -> float:
        """The wait after `failures` consecutive failures (1 = the first)."""
        # tenacity's strategies read only the attempt number from the call state.
        state = RetryCallState(AsyncRetrying(), None, (), {})
        state.attempt_number = max(1, failures)
        return float(self.wait(state))


async def retry_forever(
    policy: BackoffPolicy,
    what: str,
    call: Callable[[], Awaitable[T]],
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Await `call()` until it succeeds, retrying only `retry_on` errors (transient
    infrastructure); any other error propagates at once, because retrying cannot fix it."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None  # tenacity sleeps only after a failed attempt
        log.warning("%s failed, retrying in %.1fs: %s", what, state.upcoming_sleep, exc)
        if on_retry is not None:
            on_retry(exc, state.upcoming_sleep)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=policy.wait,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity awaits only coroutine functions; `call` may be a lambda returning one.
        return await call()

    return await retrying(attempt)


class Backoff:
    """Backoff between turns of a loop that must not block on one failing call (a poll
    or a commit retried on a later turn): remembers how often it failed and when the
    next try is due."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self._policy = policy
        self._failures = 0
        self._next_at = 0.0

    @property
    def delay(self) -> float:
        """The wait before the next try if the current one fails."""
        return self._policy.delay(self._failures + 1)

    def failed(self) -> None:
        self._next_at = time.monotonic() + self.delay
        self._failures += 1

    def due(self) -> bool:
        return time.monotonic() >= self._next_at

    async def wait(self) -> None:
        delay = self.delay
        self.failed()
        await asyncio.sleep(delay)

    def reset(self) -> None:
        self._failures = 0
        self._next_at = 0.0
