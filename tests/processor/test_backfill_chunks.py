"""Backfills in chunks, through the real processor, log and engine.

A funnel saved after its events were stored is rebuilt chunk by chunk while live events
keep arriving; the result must equal the single-shot backfill (one chunk) and the
reference. A stop in the middle ends the processor between chunks, and the next start
resumes after the last chunk written (and loads the progress the first run wrote). With
many funnels saved, saving one more writes only that funnel's rows: its progress of the
visitors it touches, not their whole states.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.log.embedded import EmbeddedLog
from processor.backfill import definition_hash
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from processor.restore import stored_states
from processor.rows import ms_to_datetime
from processor.sink import FUNNEL_PROGRESS_COLUMNS
from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.fixtures.clickhouse import InterceptedClickHouse, truncate_all
from tests.processor.test_pipeline import append, run_until_idle
from tests.processor.test_user_funnels import (
    BY_USER,
    expected_levels,
    live_levels,
    user_traffic,
)

pytestmark = pytest.mark.clickhouse

PARTITIONS = 4
BY_VISITOR = FunnelDefinition.model_validate(
    {
        "id": "by_visitor",
        "project": "p",
        "window_seconds": 900,
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
    }
)
# Saved first, so the processor has a funnel while the history is stored.
EARLY = FunnelDefinition.model_validate(
    {"id": "early", "project": "p", "steps": [{"event": "page"}, {"event": "view"}]}
)
LATER = (BY_VISITOR, BY_USER.model_copy(update={"id": "later_by_user"}))


def config(chunk: int) -> ProcessorConfig:
    return ProcessorConfig(
        batch_max_messages=40,
        batch_max_seconds=0.02,
        poll_max_messages=40,
        backfill_chunk_visitors=chunk,
    )


def payloads(events: list[Event]) -> list[tuple[bytes, bytes]]:
    return [(e.partition_key(), encode(e)) for e in events]


def markers(ch: ClickHouse, funnel_id: str) -> int:
    ((n,),) = ch.query_rows_sync(
        "SELECT count() FROM funnel_backfills FINAL WHERE funnel_id = {f:String}",
        {"f": funnel_id},
    )
    return int(n)


def progress(funnel: FunnelDefinition) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "funnelstream_backfill_progress", {"project": funnel.project, "funnel": funnel.id}
    )


def live_rows(ch: ClickHouse, funnel_ids: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """The live tables' rows of these funnels, as `/live` and the transitions feed read
    them (FINAL), without the processing times."""
    states = ch.query_rows_sync(
        "SELECT funnel_id, visitor_id, level, step_started_at, step_reached_at, "
        "step_attempts FROM funnel_state FINAL WHERE funnel_id IN {f:Array(String)} "
        "AND level > 0 ORDER BY ALL",
        {"f": list(funnel_ids)},
    )
    transitions = ch.query_rows_sync(
        "SELECT funnel_id, visitor_id, step, reached_at, chain_started_at, event_id, kind "
        "FROM funnel_transitions FINAL WHERE funnel_id IN {f:Array(String)} "
        "AND kind != 'retracted' ORDER BY ALL",
        {"f": list(funnel_ids)},
    )
    return states, transitions


async def wait_for(condition: Any, what: str, seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def backfill_while_live(ch: ClickHouse, tmp_path: Path, chunk: int) -> None:
    """Store a history with only EARLY saved; then save LATER and, while their backfill
    runs in chunks of `chunk` visitors, append more events."""
    history = user_traffic(visitors=150, users=30, seed=21)
    more = user_traffic(visitors=150, users=30, seed=22, start_ms=history[-1].timestamp_ms)
    log = EmbeddedLog(tmp_path / f"log{chunk}", default_partitions=PARTITIONS)
    await append(log, payloads(history))
    await run_until_idle(
        Processor(log, ch, FunnelCatalog([EARLY]), config(chunk)), log, len(history)
    )

    processor = Processor(log, ch, FunnelCatalog([EARLY, *LATER]), config(chunk))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await wait_for(lambda: processor.assignment(), "an assignment")
    await append(log, payloads(more))
    await wait_for(
        lambda: (
            all(markers(ch, f.id) == PARTITIONS for f in LATER)
            and processor.processed_messages >= len(more)
        ),
        "the backfill and the live events",
    )
    stop.set()
    await task
    await log.close()
    for funnel in (EARLY, *LATER):
        assert live_levels(ch, funnel) == expected_levels(funnel, history + more), funnel.id


async def test_a_backfill_in_chunks_equals_one_in_a_single_shot(
    ch: ClickHouse, tmp_path: Path
) -> None:
    ids = [f.id for f in (EARLY, *LATER)]
    await backfill_while_live(ch, tmp_path, chunk=7)
    assert progress(BY_VISITOR) == 1.0
    chunked = live_rows(ch, ids)
    assert chunked[0] and chunked[1]
    truncate_all(ch)
    await backfill_while_live(ch, tmp_path, chunk=10**9)
    single = live_rows(ch, ids)
    assert single[0] == chunked[0]
    # A user's transitions depend on which partial rebuilds ran when (each writes the
    # transitions of its batch's events): two single-shot runs differ there too. The
    # visitors' do not.
    by_visitor = [[r for r in rows[1] if r[0] != LATER[1].id] for rows in (single, chunked)]
    assert by_visitor[0] == by_visitor[1]


class Counting(InterceptedClickHouse):
    """The real engine, counting the rows written per table."""

    def __init__(self, real: ClickHouse) -> None:
        super().__init__(real)
        self.rows: dict[str, list[Sequence[Any]]] = {}

    async def intercept(self, table: str, rows: Sequence[Sequence[Any]]) -> str:
        self.rows.setdefault(table, []).extend(rows)
        return table


async def test_a_stopped_backfill_stops_at_once_and_resumes_where_it_was(
    ch: ClickHouse, tmp_path: Path
) -> None:
    events = user_traffic(visitors=400, users=40, seed=31)
    log = EmbeddedLog(tmp_path / "log", default_partitions=PARTITIONS)
    await append(log, payloads(events))
    await run_until_idle(Processor(log, ch, FunnelCatalog([EARLY]), config(3)), log, len(events))
    with_events = len({e.visitor_id for e in events if e.event in ("view", "cart", "buy")})

    first = Processor(log, ch, FunnelCatalog([EARLY, BY_VISITOR]), config(3))
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await wait_for(lambda: 0.2 < (progress(BY_VISITOR) or 0) < 0.8, "the backfill half way")
    stop.set()
    # Stopped between two chunks, not after the whole backfill.
    await asyncio.wait_for(task, 5)
    assert 0 < (progress(BY_VISITOR) or 0) < 1
    assert markers(ch, BY_VISITOR.id) < PARTITIONS

    counting = Counting(ch)
    second = Processor(log, counting, FunnelCatalog([EARLY, BY_VISITOR]), config(3))
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    await wait_for(lambda: markers(ch, BY_VISITOR.id) == PARTITIONS, "the backfill's end")
    stop.set()
    await task
    await log.close()
    # Nothing live after the first run: the states hold the funnel only through the
    # backfills' per-funnel rows.
    assert counting.rows.get("processor_state", []) == []
    assert progress(BY_VISITOR) == 1.0
    assert live_levels(ch, BY_VISITOR) == expected_levels(BY_VISITOR, events)
    # The second run rebuilt only the visitors the first had not reached.
    rebuilt = {r[2] for r in counting.rows.get("funnel_state", []) if r[1] == BY_VISITOR.id}
    assert 0 < len(rebuilt) < with_events

    # The visitors go on: a third run continues from the progress both runs stored.
    more = user_traffic(visitors=400, users=40, seed=32, start_ms=events[-1].timestamp_ms)
    log = EmbeddedLog(tmp_path / "log", default_partitions=PARTITIONS)
    await append(log, payloads(more))
    third = Processor(log, ch, FunnelCatalog([EARLY, BY_VISITOR]), config(3))
    await run_until_idle(third, log, len(more))
    await log.close()
    assert live_levels(ch, BY_VISITOR) == expected_levels(BY_VISITOR, events + more)


async def test_saving_one_more_of_many_funnels_writes_only_its_rows(
    ch: ClickHouse, tmp_path: Path
) -> None:
    # 200 funnels saved, each on events every visitor sends: every state carries them.
    many = [
        EARLY.model_copy(update={"id": f"f{i:03d}", "window_seconds": 600 + i}) for i in range(200)
    ]
    events = user_traffic(visitors=120, users=20, seed=41)
    log = EmbeddedLog(tmp_path / "log", default_partitions=PARTITIONS)
    await append(log, payloads(events))
    first = Processor(log, ch, FunnelCatalog(many), config(50))
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await wait_for(
        lambda: (
            first.processed_messages >= len(events)
            and markers(ch, "f199") == PARTITIONS
            and all(first.backfilled("p", f.id) == first.assignment() for f in many)
        ),
        "the events and every funnel's backfill",
    )
    stop.set()
    await task

    added = BY_VISITOR.model_copy(update={"steps": BY_VISITOR.steps[1:]})  # cart → buy
    counting = Counting(ch)
    processor = Processor(log, counting, FunnelCatalog([*many, added]), config(50))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await wait_for(lambda: markers(ch, added.id) == PARTITIONS, "the backfill")
    stop.set()
    await task
    await log.close()

    touched = {e.visitor_id for e in events if e.event in ("cart", "buy")}
    # No visitor's whole state (201 funnels each) is written again: one row per visitor
    # the funnel touched, holding its progress in that funnel only.
    assert counting.rows.get("processor_state", []) == []
    progress_rows = counting.rows.get("visitor_funnel_progress", [])
    assert sorted(str(r[2]).split("\x1f")[1] for r in progress_rows) == sorted(touched)
    assert {r[3] for r in progress_rows} == {added.id}
    assert {r[1] for r in counting.rows.get("funnel_state", [])} == {added.id}
    assert {r[1] for r in counting.rows.get("funnel_transitions", [])} <= {added.id}
    # Nothing of the 200 others was read or written again: no marker, no progress row.
    assert {r[3] for r in counting.rows.get("funnel_backfills", [])} == {added.id}
    assert live_levels(ch, added) == expected_levels(added, events)


async def test_stored_progress_of_the_current_definition_loads_over_an_older_state(
    ch: ClickHouse,
) -> None:

    walked = VisitorState("p", "v")
    for n, name in enumerate(["view", "cart"]):
        apply_event(
            walked,
            Event("p", f"00000000-0000-4000-8000-{n:012d}", name, "v", 1000 + n, 1000),
            partition=0,
            offset=n,
            funnels=[BY_VISITOR],
            timing=Timing(),
            processed_at_ms=0,
            out=Outputs(),
        )
    made = orjson.dumps(walked.funnels[BY_VISITOR.id].to_json()).decode()
    at = ms_to_datetime(0)
    states = [
        ("g", 0, f"p\x1f{v}", VisitorState("p", v, applied_offset=o).dumps().decode(), o)
        for v, o in (("fresh", 10), ("newer", 12), ("redefined", 10))
    ]
    ch.insert_sync(
        "processor_state",
        states,
        ["consumer_group", "log_partition", "visitor_key", "state", "applied_offset"],
    )
    current = definition_hash(BY_VISITOR)
    rows = [
        ("g", 0, "p\x1ffresh", BY_VISITOR.id, current, made, 10, at),  # wins: not older
        ("g", 0, "p\x1fnewer", BY_VISITOR.id, current, made, 11, at),  # the state is newer
        ("g", 0, "p\x1fredefined", BY_VISITOR.id, "another", made, 10, at),  # old definition
    ]
    ch.insert_sync("visitor_funnel_progress", rows, list(FUNNEL_PROGRESS_COLUMNS))
    loaded = {
        key.split("\x1f")[1]: state
        for _, key, state in await stored_states(
            ch, "g", frozenset({0}), FunnelCatalog([BY_VISITOR])
        )
    }
    assert loaded["fresh"].funnels[BY_VISITOR.id].level == 2
    assert loaded["newer"].funnels == {}
    assert loaded["redefined"].funnels == {}
