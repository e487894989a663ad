"""What the fault scenarios share: seeded traffic, the oracle of what must be stored, a
switch for the server's fault plan, and the end-of-scenario comparison.

Every scenario ends in `assert_exact`: stored events, sessions, live stages and the report
(by visitor and by attempt) equal what the oracle computes from the events that were
acknowledged — zero lost, zero counted twice. The oracle is independent of the product:
sessions by the gap rule written out here, funnels by tests/oracle/funnel_reference.py.

Seeds and sizes: `FUNNELSTREAM_FAULT_SEED` picks the seed (default: each test's own), and
`FUNNELSTREAM_FAULT_SOAK=1` runs the long profile (more traffic, more rounds); CI runs
the short one.
"""

from __future__ import annotations

import copy
import itertools
import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from funnel.compiled import compile_funnel
from funnelstream.clickhouse import ClickHouse
from funnelstream.faults import FaultPlan
from funnelstream.log import LogRecord
from processor.rows import ms_to_datetime
from schemas.events import Event, encode, parse_event
from schemas.funnels import FunnelDefinition
from tests.oracle import funnel_reference as reference

SOAK = os.environ.get("FUNNELSTREAM_FAULT_SOAK") == "1"
PROJECT = "shop"  # tests/e2e/server.py's CONFIG
STEPS = ("page_view", "product_view", "add_to_cart", "checkout_started", "purchase")
SESSION_GAP_MS = 30 * 60 * 1000
# The checkout funnel of tests/e2e/server.py's CONFIG, and the same counting attempts:
# a second copy of an event would show there first.
CHECKOUT = FunnelDefinition.model_validate(
    {
        "id": "checkout",
        "project": PROJECT,
        "window_seconds": 86400,
        "steps": [{"event": s} for s in STEPS],
    }
)
ATTEMPTS = CHECKOUT.model_copy(update={"id": "attempts", "counting": "total"})
EVERYTHING = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
FROM_MS, TO_MS = 1_577_836_800_000, 4_102_444_800_000


def seed(default: int) -> int:
    return int(os.environ.get("FUNNELSTREAM_FAULT_SEED", default))


def size(ci: int, soak: int) -> int:
    return soak if SOAK else ci


def shop_traffic(visitors: int, seed: int, start_ms: int | None = None) -> list[dict[str, Any]]:
    """Raw events as a client sends them: visitors come once or twice (the second visit
    after a session gap, so a new session and a new attempt), each visit walking the
    checkout steps to a drawn depth; sorted by time."""
    rng = random.Random(seed)
    start = start_ms if start_ms is not None else int(time.time() * 1000) - 6 * 3600_000
    events: list[dict[str, Any]] = []
    for v in range(visitors):
        visitor = f"v{seed}-{v}"
        ts = start + rng.randrange(0, 3600_000)
        for _visit in range(rng.choice((1, 1, 2))):
            depth = 1
            while depth < len(STEPS) and rng.random() < 0.6:
                depth += 1
            for k in range(depth):
                ts += rng.randrange(1_000, 120_000)
                events.append(
                    {
                        "event": STEPS[k],
                        "visitor_id": visitor,
                        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        "timestamp": ts,
                        "properties": {"source": rng.choice(("ads", "mail", "direct"))},
                    }
                )
            ts += SESSION_GAP_MS + rng.randrange(60_000, 3600_000)
    events.sort(key=lambda e: int(e["timestamp"]))
    return events


def batches(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def parsed(raw: Iterable[dict[str, Any]], received_at_ms: int | None = None) -> list[Event]:
    """Events as ingest makes them (for tests that append to the log themselves)."""
    now = received_at_ms or int(time.time() * 1000)
    out = []
    for r in raw:
        event = parse_event(r, project_id=PROJECT, received_at_ms=now)
        assert isinstance(event, Event), event
        out.append(event)
    return out


def records(events: Sequence[Event]) -> list[LogRecord]:
    """Log records exactly as ingest appends them."""
    return [LogRecord(e.partition_key(), encode(e), e.received_at_ms) for e in events]


# -- the oracle -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What must be stored once the acknowledged events are processed."""

    events: int
    visitors: int
    sessions: int
    # Per step of the checkout funnel: visitors reaching it; attempts reaching it.
    reached: list[int]
    attempts: list[int]

    @classmethod
    def of(cls, acknowledged: Iterable[dict[str, Any]]) -> Expected:
        unique = {str(e["event_id"]): e for e in acknowledged}.values()
        times: dict[str, list[int]] = defaultdict(list)
        for e in unique:
            times[str(e["visitor_id"])].append(int(e["timestamp"]))
        sessions = 0
        for stamps in times.values():
            stamps.sort()
            sessions += 1 + sum(b - a >= SESSION_GAP_MS for a, b in itertools.pairwise(stamps))
        refs = [
            reference.RefEvent(
                str(e["event_id"]), str(e["event"]), str(e["visitor_id"]), int(e["timestamp"])
            )
            for e in unique
        ]
        return cls(
            events=len(unique),
            visitors=len(times),
            sessions=sessions,
            reached=[s.entities for s in reference.report(CHECKOUT, refs, FROM_MS, TO_MS)],
            attempts=[s.entities for s in reference.report(ATTEMPTS, refs, FROM_MS, TO_MS)],
        )


def stored(ch: ClickHouse) -> dict[str, Any]:
    """What the engine holds, read as every reader reads it: with FINAL where readers
    use FINAL, and as written where some do not (a second copy of a row shows there)."""

    def one(sql: str) -> int:
        return int(ch.query_rows_sync(sql)[0][0])

    levels = dict(
        ch.query_rows_sync(
            "SELECT level, count() FROM funnel_state FINAL WHERE funnel_id = 'checkout' "
            "GROUP BY level"
        )
    )
    return {
        "events": one("SELECT count() FROM events FINAL"),
        "events as written": one("SELECT count() FROM events"),
        "visitors": one("SELECT uniqExact(visitor_id) FROM events FINAL"),
        "sessions": one("SELECT count() FROM sessions FINAL"),
        "transitions": one(
            "SELECT count() FROM funnel_transitions FINAL WHERE funnel_id = 'checkout'"
        ),
        "transitions as written": one(
            "SELECT count() FROM funnel_transitions WHERE funnel_id = 'checkout'"
        ),
        "transitions by time as written": one(
            "SELECT count() FROM funnel_transitions_by_time WHERE funnel_id = 'checkout'"
        ),
        "live reached": [
            sum(int(n) for level, n in levels.items() if int(level) > k) for k in range(5)
        ],
        "report reached": sql_report(ch, CHECKOUT),
        "report attempts": sql_report(ch, ATTEMPTS),
        "dead letters": one("SELECT count() FROM dead_letters"),
    }


def sql_report(ch: ClickHouse, funnel: FunnelDefinition) -> list[int]:
    """The report's counts per step, by the query API's own SQL."""
    from funnel.sql.report import report_sql

    start, end = ms_to_datetime(FROM_MS), ms_to_datetime(TO_MS)
    sql, params = report_sql(compile_funnel(funnel), PROJECT, start, end, end)
    by_step = {int(r[0]): int(r[1]) for r in ch.query_rows_sync(sql, params)}
    return [by_step.get(k + 1, 0) for k in range(len(funnel.steps))]


def expected_rows(want: Expected) -> dict[str, Any]:
    return {
        "events": want.events,
        "events as written": want.events,
        "visitors": want.visitors,
        "sessions": want.sessions,
        "transitions": sum(want.reached),
        "transitions as written": sum(want.reached),
        "transitions by time as written": sum(want.reached),
        "live reached": want.reached,
        "report reached": want.reached,
        "report attempts": want.attempts,
        "dead letters": 0,
    }


def assert_stored_exactly(ch: ClickHouse, want: Expected, *, replayed: bool = False) -> None:
    """The engine's tables and reports equal the oracle (in-process scenarios).

    `replayed`: a member took over partitions and replayed from the last commit what the
    previous owner had written but not committed. Those rows are written again by design
    (at least once, collapsed by the tables' keys, which every reader honours), so rows
    "as written" are not compared."""
    got, expected = stored(ch), expected_rows(want)
    if replayed:
        expected = {k: v for k, v in expected.items() if "as written" not in k}
    wrong = {k: f"stored {got[k]}, expected {v}" for k, v in expected.items() if got[k] != v}
    assert not wrong, wrong


def with_faults(ch: ClickHouse, plan: FaultPlan) -> ClickHouse:
    """The same engine (same session, same lock) behind a fault plan."""
    faulty = copy.copy(ch)
    faulty.faults = plan
    return faulty


class FaultFile:
    """The fault plan file a server subprocess reads (FUNNELSTREAM_TEST_FAULTS)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set({})

    def env(self) -> dict[str, str]:
        return {"FUNNELSTREAM_TEST_FAULTS": str(self.path), "FUNNELSTREAM_TEST_FAULTS_ALLOWED": "1"}

    def set(self, rules: dict[str, Any]) -> None:
        # Written whole and renamed, so a reader never sees half a plan.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(rules))
        tmp.replace(self.path)
