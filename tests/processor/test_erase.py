"""Erasure through the real log, processor and engine: after the erasure records are
processed nothing of the erased visitors and user can be read from any table or the
processor's memory, everyone else's live state still equals the reference, and a replay
of the whole log (another consumer group) leaves them erased."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from funnelstream.clickhouse import ClickHouse
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor
from schemas.erasure import Erasure, encode_erasure
from schemas.events import Event, encode
from tests.processor.test_pipeline import T0, append, run_until_idle
from tests.processor.test_user_funnels import (
    BY_USER,
    config,
    expected_levels,
    live_levels,
    user_traffic,
)

pytestmark = pytest.mark.clickhouse

BY_VISITOR = BY_USER.model_copy(update={"id": "by_visitor", "count_by": "visitor"})
FUNNELS = [BY_USER, BY_VISITOR]


def rename(events: list[Event], visitors: dict[str, str], users: dict[str, str]) -> list[Event]:
    """Give the visitors and users to erase ids no other id contains, so a search of every
    table for the ids cannot miss or mistake them."""
    return [
        dataclasses.replace(
            e,
            visitor_id=visitors.get(e.visitor_id, e.visitor_id),
            user_id=users.get(e.user_id, e.user_id),
        )
        for e in events
    ]


def every_row(ch: ClickHouse) -> dict[str, list[str]]:
    """Every row of every table, as text, without FINAL (nothing hidden by a merge)."""
    out = {}
    for (table,) in ch.query_rows_sync(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine NOT LIKE '%View%'"
    ):
        out[table] = [repr(row) for row in ch.query_rows_sync(f"SELECT * FROM {table}")]
    return out


def mentions(ch: ClickHouse, needles: set[str]) -> list[tuple[str, str]]:
    return [
        (table, row)
        for table, rows in every_row(ch).items()
        for row in rows
        if any(n in row for n in needles)
    ]


def log_records(tmp_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "log" / "log.sqlite3") as db:
        rows = db.execute("SELECT topic, value FROM records").fetchall()
    return [(str(topic), bytes(value).decode()) for topic, value in rows]


def erasure(visitor: str, user: str = "") -> tuple[bytes, bytes]:
    record = Erasure("p", visitor, str(uuid.uuid4()), T0, user)
    return record.partition_key(), encode_erasure(record)


def traffic() -> tuple[list[Event], str, str, list[str]]:
    """Events, the visitor to erase (counted for a user who has other visitors), the user
    to erase, and that user's visitors."""
    events = user_traffic(visitors=60, users=8, seed=3)
    users_of: dict[str, set[str]] = {}
    for e in events:
        if e.user_id:
            users_of.setdefault(e.user_id, set()).add(e.visitor_id)
    shared = sorted(u for u, vs in users_of.items() if len(vs) >= 3)
    keep_user, gone_user = shared[0], shared[1]
    one = sorted(users_of[keep_user])[0]
    gone_visitors = {v: f"gone-{v}-of-user" for v in sorted(users_of[gone_user]) if v != one}
    events = rename(events, {one: f"gone-{one}", **gone_visitors}, {gone_user: "gone-user"})
    return events, f"gone-{one}", "gone-user", sorted(gone_visitors.values())


async def test_erased_visitor_and_user_are_gone_everywhere(ch: ClickHouse, tmp_path: Path) -> None:
    events, visitor, user, user_visitors = traffic()
    log = EmbeddedLog(tmp_path / "log", default_partitions=4)
    payloads = [(e.partition_key(), encode(e)) for e in events]
    # A message of the visitor the processor cannot use: kept as a dead letter.
    payloads.append((b"p\x1f" + visitor.encode(), f'{{"v":1,"p":"p","vid":"{visitor}"}}'.encode()))
    await append(log, payloads)
    await run_until_idle(Processor(log, ch, FunnelCatalog(FUNNELS), config()), log, len(payloads))
    gone_ids = {e.event_id for e in events if e.visitor_id == visitor or e.user_id == user}
    gone_ids |= {e.event_id for e in events if e.visitor_id in user_visitors}
    needles = {visitor, user, *user_visitors, *gone_ids}
    assert {table for table, _ in mentions(ch, needles)} >= {
        "events",
        "sessions",
        "funnel_state",
        "funnel_transitions",
        "funnel_transitions_by_time",
        "processor_state",
        "visitor_identities",
        "dead_letters",
    }

    # Another visitor's erasure (unknown: harmless), the visitor's, the user's.
    erasures = [erasure("nobody"), erasure(visitor), *(erasure(v, user) for v in user_visitors)]
    await append(log, erasures)
    restarted = Processor(log, ch, FunnelCatalog(FUNNELS), config())
    await run_until_idle(restarted, log, len(erasures))

    assert mentions(ch, needles) == []
    held = restarted._steps.states
    assert not [k for p in range(4) for k in held.of(p) if "gone" in k]
    left = [e for e in events if e.event_id not in gone_ids]
    for funnel in FUNNELS:
        assert live_levels(ch, funnel) == expected_levels(funnel, left), funnel.id

    # The embedded log dropped their events and dead letters; the erasure records stay
    # (until the log's retention), and replay as no-ops.
    assert [
        topic for topic, value in log_records(tmp_path) if any(n in value for n in needles)
    ] == ["events"] * (len(erasures) - 1)
    # The whole log again, from its start, with what it still holds.
    replay = dataclasses.replace(config(), group="replay")
    await run_until_idle(
        Processor(log, ch, FunnelCatalog(FUNNELS), replay), log, len(payloads) + len(erasures)
    )
    await log.close()
    assert mentions(ch, needles) == []
    for funnel in FUNNELS:
        assert live_levels(ch, funnel) == expected_levels(funnel, left), funnel.id


async def test_events_after_an_erasure_are_new_data(ch: ClickHouse, tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    funnel = BY_VISITOR

    def visit(n: int, name: str) -> tuple[bytes, bytes]:
        e = Event("p", str(uuid.UUID(int=n, version=4)), name, "v", T0 + n * 1000, T0)
        return e.partition_key(), encode(e)

    # The erasure takes the first two steps; the resend of the first event after it is
    # stored again (the dedupe store went with the events).
    payloads = [visit(1, "view"), visit(2, "cart"), erasure("v"), visit(1, "view")]
    await append(log, payloads)
    await run_until_idle(Processor(log, ch, FunnelCatalog([funnel]), config()), log, 4)
    await log.close()
    assert ch.query_rows_sync("SELECT toString(event_id) FROM events") == [
        (str(uuid.UUID(int=1, version=4)),)
    ]
    assert live_levels(ch, funnel) == {1: 1}


class CrashBeforeEventDelete(ClickHouse):
    """The real engine; the first delete of events raises a non-retried error: a crash
    with the erasure half done (every other table deleted) and its offset not committed."""

    def __init__(self, real: ClickHouse) -> None:
        self.__dict__.update(real.__dict__)
        self.crashed = False

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        if sql.startswith("DELETE FROM events") and not self.crashed:
            self.crashed = True
            raise RuntimeError("crash")
        await super().command(sql, parameters)


async def test_a_crash_mid_erasure_replays_it(ch: ClickHouse, tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=1)
    funnel = BY_VISITOR

    def visit(visitor: str, n: int, name: str) -> tuple[bytes, bytes]:
        e = Event("p", str(uuid.UUID(int=n, version=4)), name, visitor, T0 + n * 1000, T0)
        return e.partition_key(), encode(e)

    payloads = [visit("v", 1, "view"), visit("w", 2, "view"), visit("v", 3, "cart")]
    await append(log, payloads)
    await run_until_idle(Processor(log, ch, FunnelCatalog([funnel]), config()), log, 3)
    await append(log, [erasure("v"), visit("v", 4, "view"), visit("w", 5, "cart")])
    with pytest.raises(RuntimeError, match="crash"):
        crashing = CrashBeforeEventDelete(ch)
        await Processor(log, crashing, FunnelCatalog([funnel]), config()).run(asyncio.Event())
    restarted = Processor(log, ch, FunnelCatalog([funnel]), config())
    await run_until_idle(restarted, log, 3)  # from the erasure on: it was not committed
    await log.close()
    stored = ch.query_rows_sync("SELECT visitor_id, toString(event_id) FROM events")
    want = [(v, str(uuid.UUID(int=n, version=4))) for v, n in [("w", 2), ("v", 4), ("w", 5)]]
    assert sorted(stored) == sorted(want)
    assert live_levels(ch, funnel) == {1: 1, 2: 1}


async def test_a_crash_after_the_deletes_still_rebuilds_the_users(
    ch: ClickHouse, tmp_path: Path
) -> None:
    """The replay of an erasure that failed after the visitor's identities would have gone
    still finds the user it counted for: the user's state is rebuilt from the others."""
    log = EmbeddedLog(tmp_path / "log", default_partitions=1)
    funnel = BY_USER

    def visit(visitor: str, n: int, name: str) -> tuple[bytes, bytes]:
        e = Event("p", str(uuid.UUID(int=n, version=4)), name, visitor, T0 + n * 1000, T0)
        e = dataclasses.replace(e, user_id="u")
        return e.partition_key(), encode(e)

    # v reaches "view" and "cart" for u; w only "view".
    await append(log, [visit("v", 1, "view"), visit("v", 2, "cart"), visit("w", 3, "view")])
    await run_until_idle(Processor(log, ch, FunnelCatalog([funnel]), config()), log, 3)
    assert live_levels(ch, funnel) == {2: 1}
    await append(log, [erasure("v")])
    with pytest.raises(RuntimeError, match="crash"):
        crashing = CrashBeforeEventDelete(ch)
        await Processor(log, crashing, FunnelCatalog([funnel]), config()).run(asyncio.Event())
    await run_until_idle(Processor(log, ch, FunnelCatalog([funnel]), config()), log, 1)
    await log.close()
    assert live_levels(ch, funnel) == {1: 1}  # u, from w's view alone
