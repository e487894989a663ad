"""Any arrival order through the real processor, embedded log and ClickHouse engine.

Random histories and funnel definitions, delivered in a random order with a share of the
events hours or days late, in several appends (so in several batches): at the end the
stored events, the sessions table, the live stage rows, the transitions table's end state
and the funnel report all equal what the reference computes from the events (for
transitions: what in-timestamp-order delivery leaves). CI runs a short seeded profile;
`LATE_PIPELINE_EXAMPLES` raises it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.compiled import compile_funnel
from funnel.sql.report import report_sql
from funnelstream.clickhouse import ClickHouse
from funnelstream.log import LogRecord
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from processor.rows import ms_to_datetime
from processor.sessionize import reference_sessions
from processor.transform import Timing
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.fixtures.clickhouse import InterceptedClickHouse, truncate_all
from tests.oracle import funnel_reference as reference
from tests.processor.test_live_differential import as_event, expected, live_funnels
from tests.processor.test_refold import GAP_MS, deliver, late_orders
from tests.query_api.test_report_differential import END, START, streams

pytestmark = pytest.mark.clickhouse

EXAMPLES = int(os.environ.get("LATE_PIPELINE_EXAMPLES", "12"))
# One second as well as the default ten minutes: with a short lateness most
# out-of-order events are too late for the live state, so the re-fold path runs often.
LATENESS_MS = (1_000, 10 * 60 * 1000)
_runs = itertools.count()


async def _process(
    path: Path,
    ch: ClickHouse,
    funnel: FunnelDefinition,
    chunks: list[list[reference.RefEvent]],
    lateness_ms: int,
) -> None:
    log = EmbeddedLog(path, default_partitions=2)
    producer = log.producer("events")
    await producer.start()
    config = ProcessorConfig(
        batch_max_seconds=0.02,
        timing=Timing(session_gap_ms=GAP_MS, lateness_ms=lateness_ms),
    )
    processor = Processor(log, ch, FunnelCatalog([funnel]), config)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    sent = 0
    for chunk in chunks:
        records = []
        for e in chunk:
            event = as_event(e)
            records.append(LogRecord(event.partition_key(), encode(event), e.timestamp_ms))
        await producer.append(records)
        sent += len(records)
        # Let each chunk be its own batch (or batches): late events meet written ones.
        for _ in range(400):
            if processor.processed_messages >= sent:
                break
            await asyncio.sleep(0.01)
    stop.set()
    await task
    await producer.stop()
    await log.close()
    assert processor.processed_messages == sent


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(live_funnels(), streams(), st.data())
def test_stored_live_and_reports_agree_in_any_arrival_order(
    ch: ClickHouse,
    tmp_path: Path,
    funnel: FunnelDefinition,
    events: list[reference.RefEvent],
    data: st.DataObject,
) -> None:
    truncate_all(ch)
    funnel = funnel.model_copy(update={"project": "p"})
    arrived = data.draw(late_orders(events))
    lateness = data.draw(st.sampled_from(LATENESS_MS))
    # At least one cut: late events meet rows an earlier batch wrote.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(arrived)), min_size=1, max_size=3)))
    bounds = [0, *cuts, len(arrived)]
    chunks = [arrived[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    asyncio.run(_process(tmp_path / f"log{next(_runs)}", ch, funnel, chunks, lateness))

    # Stored events: each once.
    ((stored,),) = ch.query_rows_sync("SELECT count() FROM events FINAL")
    assert stored == len(events)

    # Sessions: the batch answer.
    rows = ch.query_rows_sync(
        "SELECT visitor_id, toUnixTimestamp64Milli(started_at), "
        "toUnixTimestamp64Milli(ended_at), event_count FROM sessions FINAL"
    )
    got_sessions = sorted((str(v), int(a), int(b), int(c)) for v, a, b, c in rows)
    want_sessions = sorted(
        (v, *s)
        for v in {e.visitor_id for e in events}
        for s in reference_sessions([e.timestamp_ms for e in events if e.visitor_id == v], GAP_MS)
    )
    assert got_sessions == want_sessions

    # Live stage rows: the reference's level per visitor.
    held, _ = expected(funnel, events)
    want_levels = {
        v: lvl
        for v, slots in held.items()
        if (lvl := max((k + 1 for k, s in enumerate(slots) if s is not None), default=0))
    }
    rows = ch.query_rows_sync("SELECT visitor_id, level FROM funnel_state FINAL WHERE level > 0")
    assert {str(v): int(lvl) for v, lvl in rows} == want_levels

    # Transitions: the end state in-order delivery leaves.
    in_order = sorted(events, key=lambda e: (e.timestamp_ms, e.event_id))
    _, tables = deliver(funnel, in_order, lateness)
    want_transitions = {
        (k[0], k[1], k[2]): (int(v[0]), str(v[2])) for k, v in tables.transition_end_state().items()
    }
    rows = ch.query_rows_sync(
        "SELECT funnel_id, visitor_id, step, toUnixTimestamp64Milli(reached_at), "
        "toString(event_id) FROM funnel_transitions FINAL WHERE kind != 'retracted'"
    )
    got_transitions = {(str(f), str(v), int(s)): (int(r), str(i)) for f, v, s, r, i in rows}
    assert got_transitions == want_transitions

    # The report over the stored events: the reference's counts per step.
    now_ms = END + 3600_000
    sql, params = report_sql(
        compile_funnel(funnel),
        "p",
        ms_to_datetime(START),
        ms_to_datetime(END),
        ms_to_datetime(now_ms),
    )
    by_step = {int(r[0]): int(r[1]) for r in ch.query_rows_sync(sql, params)}
    for k, want in enumerate(reference.report(funnel, events, START, END, now_ms)):
        assert by_step.get(k + 1, 0) == want.entities, k


# Two steps, one visitor "v": the late-event scenarios below.
VIEW_CART = FunnelDefinition.model_validate(
    {"id": "f", "project": "p", "steps": [{"event": "view"}, {"event": "cart"}]}
)
_T0 = 1_760_000_000_000


def _ev(n: int, name: str, minute: int) -> Event:
    return Event("p", f"00000000-0000-4000-8000-{n:012d}", name, "v", _T0 + minute * 60_000, _T0)


async def test_a_retried_write_publishes_each_correction_once(
    ch: ClickHouse, tmp_path: Path
) -> None:
    """A late event re-folds its visitor and corrects its step-1 transition; the batch's
    last write (visitor states) fails once, so the whole write is retried. The retry
    writes the same correction again (one write time: a stream reader sees it once), the
    re-fold is counted once, and so are the funnel metrics' transitions and corrections
    (processor/funnel_metrics.py), none going down."""
    from funnelstream import metrics
    from tests.processor.test_pipeline import FlakyClickHouse

    funnel = VIEW_CART

    log = EmbeddedLog(tmp_path / "log", default_partitions=1)
    producer = log.producer("events")
    await producer.start()
    flaky = FlakyClickHouse(ch, {})
    config = ProcessorConfig(batch_max_seconds=0.02, retry_initial_seconds=0.05)
    processor = Processor(log, flaky, FunnelCatalog([funnel]), config)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))

    async def send(events: list[Event]) -> None:
        target = processor.processed_messages + len(events)
        await producer.append([LogRecord(e.partition_key(), encode(e), 0) for e in events])
        for _ in range(500):
            if processor.processed_messages >= target:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not processed")

    def counts() -> dict[str, float]:
        labels = {"project": "p", "funnel": funnel.id}
        fixes = "funnelstream_funnel_transition_corrections_total"
        reached = "funnelstream_funnel_transitions_total"
        samples = {
            "reached 1": (reached, {**labels, "step": "1", "from_step": ""}),
            "reached 2": (reached, {**labels, "step": "2", "from_step": "1"}),
            "retracted 1": (fixes, {**labels, "step": "1", "kind": "retracted"}),
            "corrected 1": (fixes, {**labels, "step": "1", "kind": "corrected"}),
        }
        return {k: metrics.REGISTRY.get_sample_value(*v) or 0.0 for k, v in samples.items()}

    start = counts()
    refolded = "funnelstream_processor_refolded_visitors_total"
    await send([_ev(1, "view", 60), _ev(2, "cart", 61)])
    before = metrics.REGISTRY.get_sample_value(refolded) or 0.0
    flaky.fail_tables["processor_state"] = 1
    await send([_ev(3, "view", 0)])  # an hour before the rest: too late, re-folded
    stop.set()
    await task
    await producer.stop()
    await log.close()

    assert flaky.fail_tables["processor_state"] == 0  # the write did fail once
    assert (metrics.REGISTRY.get_sample_value(refolded) or 0.0) == before + 1
    end = counts()
    assert {k: end[k] - start[k] for k in end} == {
        "reached 1": 1,
        "reached 2": 1,
        "retracted 1": 1,
        "corrected 1": 1,
    }
    rows = ch.query_rows_sync(
        "SELECT kind, uniqExact(processed_at), count() FROM funnel_transitions_by_time "
        "WHERE kind != 'reached' GROUP BY kind ORDER BY kind"
    )
    assert [(str(k), int(times)) for k, times, _ in rows] == [("retracted", 1), ("corrected", 1)]
    final = ch.query_rows_sync(
        "SELECT step, toString(event_id), kind FROM funnel_transitions FINAL ORDER BY step"
    )
    assert [(int(s), str(i), str(k)) for s, i, k in final] == [
        (1, "00000000-0000-4000-8000-000000000003", "corrected"),
        (2, "00000000-0000-4000-8000-000000000002", "reached"),
    ]


async def test_a_crash_at_the_retraction_and_its_correction_replays_exactly(
    ch: ClickHouse, tmp_path: Path
) -> None:
    """The late event's retraction and correction go in one insert, which fails; the
    processor dies there (before the visitor's state and the commit). No half of the
    correction is stored, and the next processor replays the event from the log: the
    tables end as if nothing had happened."""
    from funnelstream.clickhouse import ClickHouseUnavailable

    class DiesAtTheCorrection(InterceptedClickHouse):
        def __init__(self, real: ClickHouse) -> None:
            super().__init__(real)
            self.blocked = 0

        async def intercept(self, table: str, rows: Any) -> str:
            if table == "funnel_transitions" and any(r[-1] == "corrected" for r in rows):
                self.blocked += 1
                raise ClickHouseUnavailable("injected: gone before the correction")
            return table

    funnel = VIEW_CART

    log = EmbeddedLog(tmp_path / "log", default_partitions=1)
    producer = log.producer("events")
    await producer.start()
    config = ProcessorConfig(batch_max_seconds=0.02, retry_initial_seconds=0.02)

    async def run(clickhouse: ClickHouse, until: Any) -> None:
        processor = Processor(log, clickhouse, FunnelCatalog([funnel]), config)
        task = asyncio.create_task(processor.run(asyncio.Event()))
        for _ in range(500):
            if until(processor):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    records = [_ev(1, "view", 60), _ev(2, "cart", 61), _ev(3, "view", 0)]
    await producer.append([LogRecord(e.partition_key(), encode(e), 0) for e in records[:2]])
    await run(ch, lambda p: p.processed_messages >= 2)
    await producer.append([LogRecord(records[2].partition_key(), encode(records[2]), 0)])
    dying = DiesAtTheCorrection(ch)
    await run(dying, lambda _: dying.blocked >= 2)  # retracted, correction refused: "crash"
    ((before,),) = ch.query_rows_sync("SELECT kind FROM funnel_transitions FINAL WHERE step = 1")
    assert str(before) == "reached"  # neither the retraction nor its correction
    await run(ch, lambda p: p.processed_messages >= 1)
    await producer.stop()
    await log.close()

    final = ch.query_rows_sync(
        "SELECT step, toString(event_id), kind FROM funnel_transitions FINAL ORDER BY step"
    )
    assert [(int(s), str(i), str(k)) for s, i, k in final] == [
        (1, "00000000-0000-4000-8000-000000000003", "corrected"),
        (2, "00000000-0000-4000-8000-000000000002", "reached"),
    ]
    ((level,),) = ch.query_rows_sync("SELECT level FROM funnel_state FINAL")
    assert level == 2
    ((sessions,),) = ch.query_rows_sync("SELECT count() FROM sessions FINAL")
    assert sessions == 2  # {view at 0} and {view, cart an hour later}
