"""Dedupe by event id against the stored events: the rule, its query, and the processor
with the embedded log and the real ClickHouse engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.dedupe import LOOKUP_SQL, Delivery, Key, Position, lookup_sql, resends
from processor.pipeline import Processor, ProcessorConfig
from processor.rows import EVENT_COLUMNS
from processor.transform import event_row
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.processor.test_pipeline import append, die_before_visitor_states, run_until_idle

pytestmark = pytest.mark.clickhouse

T0 = 1_760_000_000_000  # 2025-10-09T08:53:20Z
DAY = 86_400_000
# Viewing twice reaches step 2: a resend with a shifted timestamp that got through would.
AGAIN = FunnelDefinition.model_validate(
    {"id": "again", "project": "p", "steps": [{"event": "view"}, {"event": "view"}]}
)


def event(visitor: str, name: str, timestamp_ms: int, n: int) -> Event:
    return Event(
        project_id="p",
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        event=name,
        visitor_id=visitor,
        timestamp_ms=timestamp_ms,
        received_at_ms=timestamp_ms,
    )


def resent(original: Event, shift_ms: int = 0) -> Event:
    """The same event sent again; ingest's skew correction may shift its timestamp."""
    return Event(
        project_id=original.project_id,
        event_id=original.event_id,
        event=original.event,
        visitor_id=original.visitor_id,
        timestamp_ms=original.timestamp_ms + shift_ms,
        received_at_ms=original.received_at_ms + 5_000,
    )


# -- the rule and its query (pure) ------------------------------------------------------


def test_lookup_sql_reads_the_days_around_each_event() -> None:
    late_evening = event("v2", "view", T0 - T0 % DAY + DAY - 1_000, 2)
    sql = lookup_sql([Delivery(0, 1, event("v1", "view", T0, 1)), Delivery(1, 9, late_evening)])
    assert sql == LOOKUP_SQL.format(
        projects="['p']",
        days="['2025-10-08','2025-10-09','2025-10-10']",
        visitors="""JSONExtract('["v1","v2"]', 'Array(String)')""",
        ids="JSONExtract('"
        + '["00000000-0000-4000-8000-000000000001","00000000-0000-4000-8000-000000000002"]'
        + "', 'Array(String)')",
    )


def test_resend_rule() -> None:
    x = event("v", "view", T0, 1)
    key: Key = ("p", "v", x.event_id)
    cases: list[tuple[set[Position], Position, bool]] = [
        (set(), (0, 5), False),  # first copy
        ({(0, 5)}, (0, 5), False),  # its own row: a replay after a crash
        ({(0, 5)}, (0, 9), True),  # stored from an earlier offset: a resend
        ({(0, 5), (0, 9)}, (0, 5), False),  # both stored before: the earlier stays first
        ({(1, 50)}, (0, 5), True),  # stored from another partition (repartitioned)
    ]
    for stored, (partition, offset), expected in cases:
        pending: dict[Key, Position] = {}
        got = resends([Delivery(partition, offset, x)], {key: stored}, pending)
        assert got == ({(partition, offset)} if expected else set()), (stored, partition, offset)
        assert pending == ({} if expected else {key: (partition, offset)})


def test_resend_rule_within_the_unwritten_batch() -> None:
    x, y = event("v", "view", T0, 1), event("w", "view", T0, 1)  # same id, another visitor
    pending: dict[Key, Position] = {}
    assert resends([Delivery(0, 5, x), Delivery(0, 6, y), Delivery(0, 7, x)], {}, pending) == {
        (0, 7)
    }
    # A later poll of the same batch; the same message again (a rewind) is no resend.
    assert resends([Delivery(0, 5, x), Delivery(0, 8, x)], {}, pending) == {(0, 8)}
    assert pending == {("p", "v", x.event_id): (0, 5), ("p", "w", y.event_id): (0, 6)}


def test_lookup_is_pruned_by_the_primary_key(ch: ClickHouse) -> None:
    stored = event("v1", "view", T0, 1)
    ch.insert_sync("events", [event_row(stored, {}, 0, 1)], EVENT_COLUMNS)  # a part to read
    sql = lookup_sql([Delivery(0, 1, stored)])
    plan = "\n".join(str(r[0]) for r in ch.query_rows_sync("EXPLAIN indexes = 1 " + sql))
    keys = plan.split("PrimaryKey", 1)[1].split("Condition:", 1)[0]
    for column in ("project_id", "toDate(timestamp)", "visitor_id", "event_id"):
        assert column in keys, plan


# -- the processor ----------------------------------------------------------------------


def duplicates_counted() -> float:
    value = metrics.REGISTRY.get_sample_value("funnelstream_processor_duplicate_events_total")
    return value or 0.0


async def process(
    log: EmbeddedLog,
    ch: ClickHouse,
    events: list[Event],
    replayed: int = 0,
    config: ProcessorConfig | None = None,
) -> None:
    """Append events and run a new processor (nothing in memory) until it took them and
    the `replayed` messages before them."""
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    config = config or ProcessorConfig(batch_max_seconds=0.05)
    processor = Processor(log, ch, FunnelCatalog([AGAIN]), config)
    await run_until_idle(processor, log, replayed + len(events))
    assert processor.processed_messages == replayed + len(events)


def copies(ch: ClickHouse, e: Event) -> int:
    """Stored copies of an event, by log position: a replay rewrites its own position."""
    ((n,),) = ch.query_rows_sync(
        "SELECT uniqExact(log_partition, log_offset) FROM events WHERE event_id = {id:UUID}",
        {"id": e.event_id},
    )
    return int(n)


def seen_by(ch: ClickHouse, visitor: str) -> tuple[int, list[int]]:
    """The visitor's live funnel level and its sessions' event counts."""
    level = ch.query_rows_sync(
        "SELECT level FROM funnel_state FINAL WHERE visitor_id = {v:String}", {"v": visitor}
    )
    sessions = ch.query_rows_sync(
        "SELECT event_count FROM sessions FINAL WHERE visitor_id = {v:String} "
        "AND is_deleted = 0 ORDER BY started_at",
        {"v": visitor},
    )
    return (int(level[0][0]) if level else 0, [int(c) for (c,) in sessions])


def stage_counts(ch: ClickHouse) -> list[tuple[int, int]]:
    rows = ch.query_rows_sync("SELECT level, count() FROM funnel_state FINAL GROUP BY level")
    return sorted((int(level), int(c)) for level, c in rows)


async def test_a_resend_after_ten_thousand_events_is_a_duplicate(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    first = event("v0", "view", T0, 0)
    others = []
    for k in range(1, 10_001):
        # 400 s in all, within the lateness: a resend that got through would count live.
        others.append(event("v0", "scroll", T0 + 40 * k, k))
        others.append(event(f"w{k % 50}", "view", T0 + 40 * k, 10_000 + k))
    await process(log, ch, [first, *others])
    before = (seen_by(ch, "v0"), stage_counts(ch), copies(ch, first))
    assert before == ((1, [10_001]), [(1, 1), (2, 50)], 1)
    counted = duplicates_counted()

    await process(log, ch, [resent(first)])

    assert (seen_by(ch, "v0"), stage_counts(ch), copies(ch, first)) == before
    assert duplicates_counted() - counted == 1
    # What the visitor's state weighs after its 10,001 events: it keeps no event ids.
    ((size,),) = ch.query_rows_sync(
        "SELECT length(argMax(state, applied_offset)) FROM processor_state "
        "WHERE visitor_key = {k:String}",
        {"k": "p\x1fv0"},
    )
    assert size < 1_000


@pytest.mark.parametrize("poll", [500, 1], ids=["one-poll", "a-poll-each"])
async def test_a_resend_in_the_same_batch_is_a_duplicate(
    ch: ClickHouse, tmp_path: Path, poll: int
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    # A first run builds the funnel's live state (its backfill flushes the batch), so
    # the next one holds what follows in one batch.
    await process(log, ch, [event("w", "view", T0, 3)])
    first = event("v0", "view", T0, 1)
    counted = duplicates_counted()
    # One batch: the first copy is not written yet when the resend is applied.
    await process(
        log,
        ch,
        [first, event("v0", "scroll", T0 + 1_000, 2), resent(first, 3_000)],
        config=ProcessorConfig(poll_max_messages=poll, batch_max_seconds=2.0),
    )
    assert seen_by(ch, "v0") == (1, [2])
    assert copies(ch, first) == 1
    assert duplicates_counted() - counted == 1


@pytest.mark.parametrize(
    ("original_ms", "shift_ms", "deduped"),
    [
        (T0, 3_000, True),  # the skew correction moved it a little
        (T0, -3_000, True),
        (T0 - T0 % DAY + DAY - 1_000, 3_000, True),  # past midnight UTC: the next day
        (T0, 2 * DAY + 1_000, False),  # beyond the documented horizon: a new event
    ],
    ids=["later", "earlier", "next-day", "beyond-horizon"],
)
async def test_a_resend_with_a_shifted_timestamp(
    ch: ClickHouse, tmp_path: Path, original_ms: int, shift_ms: int, deduped: bool
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    first = event("v0", "view", original_ms, 1)
    await process(log, ch, [first, event("w", "view", T0, 2)])
    assert seen_by(ch, "v0") == (1, [1])
    counted = duplicates_counted()

    await process(log, ch, [resent(first, shift_ms)])

    if deduped:
        assert seen_by(ch, "v0") == (1, [1])
        assert copies(ch, first) == 1
        assert duplicates_counted() - counted == 1
    else:
        assert seen_by(ch, "v0")[0] == 2  # viewed twice, as far as anyone can tell
        assert copies(ch, first) == 2


async def test_a_replay_after_a_crash_is_applied_again_and_its_resend_is_not(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    first = event("v0", "view", T0, 1)
    events = [first, event("v0", "scroll", T0 + 1_000, 2), resent(first, 3_000)]
    events += [event(f"w{k}", "view", T0, 10 + k) for k in range(20)]
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    config = ProcessorConfig(batch_max_seconds=0.05, retry_initial_seconds=0.01)
    # Every row is written, then the visitor-state write fails and the process "dies"
    # without committing: the events table holds the first copy, from its own offset.
    await die_before_visitor_states(log, ch, FunnelCatalog([AGAIN]), config)
    assert copies(ch, first) == 1
    assert seen_by(ch, "v0") == (1, [2])
    counted = duplicates_counted()

    second = Processor(log, ch, FunnelCatalog([AGAIN]), ProcessorConfig(batch_max_seconds=0.05))
    await run_until_idle(second, log, len(events))
    await log.close()

    # No state was saved: the first copy is applied again (not taken for a resend of
    # itself), the resend is still one.
    assert seen_by(ch, "v0") == (1, [2])
    assert copies(ch, first) == 1
    assert duplicates_counted() - counted == 1


async def test_a_replay_the_state_absorbed_is_skipped_by_offset(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    first = event("v0", "view", T0, 1)
    events = [first, event("v0", "scroll", T0 + 1_000, 2), event("w", "view", T0, 3)]
    await process(log, ch, events)
    before = (seen_by(ch, "v0"), stage_counts(ch))
    # States were written, then (as if the commit was lost) the group starts over.
    group = ProcessorConfig().group
    log.store.commit("events", group, dict.fromkeys(log.store.heads("events"), 0))
    counted = duplicates_counted()

    await process(log, ch, [resent(first, 3_000)], replayed=len(events))

    assert (seen_by(ch, "v0"), stage_counts(ch)) == before
    assert copies(ch, first) == 1
    # Only the resend counts: replayed messages are skipped by offset, not as duplicates.
    assert duplicates_counted() - counted == 1
