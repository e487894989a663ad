"""Test-only fault injection at named points, in front of the real components.

The reliability suite (tests/faults/, docs/reliability.md) needs ClickHouse and the
embedded log to fail in ways a test cannot cause from outside: the embedded engine runs in
the server's own process. So the project's own wrappers ask a `FaultPlan` before (and,
for an ambiguous write, after) each call to the real thing. The engine and the log are
never replaced: a fault only raises where the real component would have raised.

A plan is a JSON object, point → rule, held in a file named by the `test_faults` setting
and read again whenever the file changes, so a test turns faults on and off in a running
server by rewriting it:

    {"clickhouse.insert": {"fault": "ambiguous", "times": 3, "match": "funnel_state"},
     "log.append": {"fault": "disk_full", "seconds": 2}}

Points (the call kinds each wrapper asks about):

    clickhouse          every ClickHouse call (read, write, DDL)
    clickhouse.insert   inserts only
    clickhouse.query    reads only
    log.append          the embedded log's write transaction

Faults:

    refuse          ClickHouse: the call fails before the engine sees it, as a dropped
                    connection does (code 210, NETWORK_ERROR). For "down", use it on
                    `clickhouse` with `seconds`.
    too_many_parts  ClickHouse: refused with code 252 (TOO_MANY_PARTS), as an engine
                    that cannot merge fast enough answers.
    ambiguous       ClickHouse: the call runs on the engine and commits, then fails
                    (code 209, SOCKET_TIMEOUT): the caller cannot know it landed.
    disk_full       log.append: the write fails as SQLite fails on ENOSPC
                    ("database or disk is full"), before anything is written.

A rule holds for `times` faults, or for `seconds` after the plan was read, or (neither)
until the file changes; `match` limits it to calls whose SQL contains the text; `chance`
(with `seed`) faults only that share of the calls, drawn from a seeded generator so a
run repeats.

Switched on only by the `test_faults` setting, which config.py refuses unless
`test_faults_allowed` is set too and the mode is not production.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CLICKHOUSE_FAULTS = frozenset({"refuse", "too_many_parts", "ambiguous"})
LOG_FAULTS = frozenset({"disk_full"})
POINTS = {
    "clickhouse": CLICKHOUSE_FAULTS,
    "clickhouse.insert": CLICKHOUSE_FAULTS,
    "clickhouse.query": CLICKHOUSE_FAULTS,
    "log.append": LOG_FAULTS,
}


class InjectedFault(Exception):
    """An error a fault rule raised in place of the real component's. Its message reads
    like the engine's own ("Code: N. DB::Exception: ..."), so it is classified by the
    same rule as a real one (funnelstream/clickhouse.py `classify`)."""


@dataclass(slots=True)
class Rule:
    fault: str
    times: int | None = None
    until: float | None = None  # time.monotonic() after which the rule is off
    match: str = ""
    chance: float = 1.0
    draws: random.Random = field(default_factory=lambda: random.Random(0))

    def fires(self, sql: str, now: float) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.until is not None and now >= self.until:
            return False
        if self.match not in sql:
            return False
        return self.chance >= 1.0 or self.draws.random() < self.chance


@dataclass(frozen=True, slots=True)
class Fault:
    """What a call must do: fail before the real call, or after it (ambiguous)."""

    kind: str
    after: bool

    def error(self, sql: str) -> Exception:
        if self.kind == "disk_full":
            # What the sqlite3 module raises when a write meets ENOSPC (SQLITE_FULL).
            return sqlite3.OperationalError("database or disk is full (injected fault)")
        code, name = {
            "refuse": (210, "NETWORK_ERROR: connection refused"),
            "too_many_parts": (252, "TOO_MANY_PARTS: too many parts, merges are slower"),
            "ambiguous": (209, "SOCKET_TIMEOUT: timeout reading the answer"),
        }[self.kind]
        return InjectedFault(f"Code: {code}. DB::Exception: {name} (injected fault) [{sql[:60]}]")


def parse_rules(raw: Any, now: float) -> dict[str, Rule]:
    """Rules from a plan's JSON value; ValueError names what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("a fault plan is a JSON object: point → rule")
    rules = {}
    for point, spec in raw.items():
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r} (known: {sorted(POINTS)})")
        if not isinstance(spec, dict) or spec.get("fault") not in POINTS[point]:
            raise ValueError(f"{point}: fault must be one of {sorted(POINTS[point])}")
        seconds = spec.get("seconds")
        rules[point] = Rule(
            fault=str(spec["fault"]),
            times=None if spec.get("times") is None else int(spec["times"]),
            until=None if seconds is None else now + float(seconds),
            match=str(spec.get("match", "")),
            chance=float(spec.get("chance", 1.0)),
            draws=random.Random(int(spec.get("seed", 0))),
        )
    return rules


class FaultPlan:
    """The faults to inject now, from a file re-read when it changes (or fixed rules)."""

    def __init__(self, path: Path | None = None, rules: Any = None) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._rules = parse_rules(rules or {}, time.monotonic())
        # Faults injected so far per point, for a test to wait on.
        self.injected: dict[str, int] = {}

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._stamp, self._rules = None, {}
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            text = self._path.read_bytes()
            self._rules = parse_rules(orjson.loads(text) if text.strip() else {}, time.monotonic())
            self._stamp = stamp

    def take(self, points: tuple[str, ...], sql: str = "") -> Fault | None:
        """The fault for a call at the first of `points` with an active rule, if any
        (one of its `times` used up)."""
        with self._lock:
            self._reload()
            now = time.monotonic()
            for point in points:
                rule = self._rules.get(point)
                if rule is None or not rule.fires(sql, now):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                self.injected[point] = self.injected.get(point, 0) + 1
                return Fault(rule.fault, after=rule.fault == "ambiguous")
            return None

    def set(self, rules: Any) -> None:
        """Replace the rules (an in-process test's switch; a file plan is rewritten)."""
        with self._lock:
            self._rules = parse_rules(rules, time.monotonic())
