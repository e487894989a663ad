"""Rate limits: how many requests one client address or one key may make per window.

Built on `limits` (the library behind slowapi and Flask-Limiter), fixed-window strategy
over its in-process memory storage:

* Fixed window keeps one counter per (limit, identity), so memory grows with the number of
  active clients, not with the allowed rate (a moving window keeps one timestamp per
  allowed request: megabytes for a generous per-address limit over many addresses).
* The window of an identity starts at its first request and lasts the limit's period; in
  it exactly `amount` requests pass. A client can get up to twice the amount through
  across the end of one window and the start of the next: the price of O(1) memory.
* The synchronous storage never awaits, so a check runs start to end on the event loop
  without interleaving: N concurrent requests against a limit of K pass exactly K
  (tests/funnelstream/test_ratelimit.py). The library's expiry thread can, at the instant
  a window ends, drop the count of the request that opened the next one: one extra
  request at most, never inside a running window.
* Buckets live in this process. With N replicas behind a load balancer each replica
  counts on its own: the effective limit is up to N times the setting (docs/limits.md).

A limit is written as `limits` parses it: "100/second", "20 per 2 seconds",
"100/second;3000/minute" (all must hold). An empty text turns the limit off.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from funnelstream import metrics


def parse_rate_limit(text: str) -> tuple[RateLimitItem, ...]:
    """The windows of a limit's text; () when it is empty (no limit). ValueError if the
    text does not parse or allows no request at all."""
    if not text.strip():
        return ()
    items = tuple(parse_many(text))
    if any(item.amount < 1 for item in items):
        raise ValueError(f"rate limit {text!r}: each window must allow at least 1 request")
    return items


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limit, named by the setting it comes from (the name a 429 and the metric use)."""

    setting: str
    items: tuple[RateLimitItem, ...]

    @classmethod
    def from_setting(cls, setting: str, text: str) -> RateLimit:
        return cls(setting, parse_rate_limit(text))

    def describe(self) -> str:
        return "; ".join(str(item) for item in self.items)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a limit: which limit, and whole seconds until its window ends."""

    limit: RateLimit
    retry_after: int

    def message(self) -> str:
        return (
            f"rate limit {self.limit.setting} ({self.limit.describe()}) exceeded; "
            f"retry after {self.retry_after} s"
        )

    def body(self) -> dict[str, str]:
        return {"error": "rate_limited", "message": self.message()}


class Limiter:
    """Counts requests per (limit, identity) in this process."""

    def __init__(self) -> None:
        self._windows = FixedWindowRateLimiter(MemoryStorage())

    def hit(self, limit: RateLimit, identity: str, route_kind: str) -> Refusal | None:
        """Counts one request; a Refusal (and the metric) when it is over any window."""
        for item in limit.items:
            if self._windows.hit(item, limit.setting, identity):
                continue
            reset_at, _ = self._windows.get_window_stats(item, limit.setting, identity)
            metrics.RATE_LIMITED.labels(route_kind, limit.setting).inc()
            # At least 1: a window ending this instant has still refused this request.
            return Refusal(limit, max(1, math.ceil(reset_at - time.time())))
        return None
