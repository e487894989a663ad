"""Funnel metrics: counted from the rows a batch wrote, stage gauges from the held states."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from funnel.fold import FunnelProgress, Transition
from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.funnel_metrics import FunnelMetrics, exported_funnels, stage_counts, tally
from processor.pipeline import Processor, ProcessorConfig
from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event, transition_row
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.processor.test_backfill_chunks import wait_for
from tests.processor.test_pipeline import FUNNEL, append, stream


def funnel(funnel_id: str, project: str = "p", **options: object) -> FunnelDefinition:
    return FunnelDefinition.model_validate(
        {
            "id": funnel_id,
            "project": project,
            "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
            **options,
        }
    )


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_cap_keeps_the_first_funnels_of_each_project_and_counts_the_rest() -> None:
    catalog = FunnelCatalog(
        [funnel("a"), funnel("b"), funnel("c"), funnel("u", count_by="user"), funnel("a", "q")]
    )
    kept, omitted = exported_funnels(catalog, 2)
    assert kept == {("p", "a"): 3, ("p", "b"): 3, ("q", "a"): 3}
    assert omitted == {"p": 1}
    # An edit moves "a" to the end of the catalog: the funnels kept stay the same.
    catalog.upsert(funnel("a", window_seconds=60))
    assert exported_funnels(catalog, 2)[0] == kept


def test_rows_are_tallied_by_kind_and_time_to_convert_from_the_attempt_start() -> None:
    def row(funnel_id: str, step: int, started_s: int, reached_s: int, kind: str) -> tuple:  # type: ignore[type-arg]
        t = Transition(step, reached_s * 1000, started_s * 1000, "e", kind)
        return transition_row("p", funnel_id, "v", t, 0)

    rows = [
        row("a", 1, 100, 100, "reached"),
        row("a", 2, 100, 160, "reached"),
        row("a", 2, 100, 160, "retracted"),
        row("a", 2, 100, 400, "corrected"),
        row("a", 4, 100, 500, "reached"),  # past the definition's steps: left out
        row("gone", 1, 0, 0, "reached"),  # not exported
    ]
    found = tally(rows, {("p", "a"): 3})
    assert found.rows == {
        ("p", "a", 1, "reached"): 1,
        ("p", "a", 2, "reached"): 1,
        ("p", "a", 2, "retracted"): 1,
        ("p", "a", 2, "corrected"): 1,
    }
    assert found.seconds_to_convert == {("p", "a", 2): [60.0, 300.0]}


def held(visitors: int, steps: int = 5) -> list[VisitorState]:
    states = []
    for n in range(visitors):
        state = VisitorState("p", f"v{n}")
        for funnel_id in ("a", "b"):
            progress = FunnelProgress(steps=steps)
            progress.level = n % (steps + 1)
            state.funnels[funnel_id] = progress
        states.append(state)
    return states


def test_stage_counts_are_visitors_at_their_deepest_step() -> None:
    counts = stage_counts(held(12, steps=5), {("p", "a"): 5, ("p", "idle"): 2})
    # levels 0..5 twice over: two visitors at each step, level 0 at none; "b" not exported
    assert counts == {("p", "a"): [2, 2, 2, 2, 2], ("p", "idle"): [0, 0]}


def fold_events(definition: FunnelDefinition, names: list[str]) -> VisitorState:
    """A visitor's state after these events, a minute apart, through the live fold."""
    state = VisitorState("p", "v")
    out = Outputs()
    for i, name in enumerate(names):
        event = Event(
            project_id="p",
            event_id=f"00000000-0000-4000-8000-{i + 1:012d}",
            event=name,
            visitor_id="v",
            timestamp_ms=1_700_000_000_000 + i * 60_000,
            received_at_ms=1_700_000_000_000,
        )
        apply_event(
            state,
            event,
            partition=0,
            offset=i,
            funnels=[definition],
            timing=Timing(),
            processed_at_ms=0,
            out=out,
        )
    return state


def test_stages_of_funnels_counting_attempts_or_sessions_are_the_live_routes() -> None:
    """Such a funnel counts attempts (or sessions) per step, as the live route reads
    `step_attempts`: one visitor who reached step 2 twice is two at step 2."""
    total = funnel("t", counting="total")
    state = fold_events(total, ["view", "cart", "view", "cart"])
    assert state.funnels["t"].level == 2
    assert stage_counts([state], {("p", "t"): 3}) == {("p", "t"): [0, 2, 0]}
    sessions = funnel("s", count_by="session")
    state = fold_events(sessions, ["view", "cart"])
    assert stage_counts([state], {("p", "s"): 3}) == {("p", "s"): [0, 1, 0]}


def test_a_scrape_over_ten_thousand_held_visitors_is_cheap() -> None:
    """The gauges are recomputed on the event loop at every scrape: 10,000 visitors in two
    funnels must stay far under a scrape interval (docs/metrics.md has the figures)."""
    states = held(10_000)
    exporter = FunnelMetrics(
        FunnelCatalog(
            [
                FunnelDefinition.model_validate(
                    {
                        "id": fid,
                        "project": "p",
                        "steps": [{"event": f"s{k}"} for k in range(5)],
                    }
                )
                for fid in ("a", "b")
            ]
        ),
        50,
    )
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        exporter.export_stages(states)
        timings.append(time.perf_counter() - started)
    best = min(timings)
    print(f"export_stages, 10,000 visitors x 2 funnels: {best * 1000:.1f} ms")
    assert best < 0.25  # 11 to 36 ms measured here, on a shared machine
    assert sample("funnelstream_funnel_visitors_at_stage", project="p", funnel="a", step="5") > 0


@pytest.mark.clickhouse
async def test_a_processor_exports_stages_and_transitions(ch: ClickHouse, tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    events = stream()
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    labels = {"project": "p", "funnel": "f"}
    bucket = "funnelstream_funnel_seconds_to_convert_bucket"

    def step_3_buckets() -> list[float]:
        return [sample(bucket, **labels, step="3", le=le) for le in ("60.0", "300.0")]

    before = [
        sample(
            "funnelstream_funnel_transitions_total",
            **labels,
            step=str(k),
            from_step=str(k - 1) if k > 1 else "",
        )
        for k in (1, 2, 3)
    ]
    buckets_before = step_3_buckets()
    processor = Processor(log, ch, FunnelCatalog([FUNNEL]), ProcessorConfig(batch_max_seconds=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    await wait_for(lambda: processor.processed_messages >= len(events), "the events processed")

    def at_stage() -> list[float]:
        processor.export_funnel_stages()
        gauge = "funnelstream_funnel_visitors_at_stage"
        return [sample(gauge, **labels, step=str(k)) for k in (1, 2, 3)]

    assert at_stage() == [10, 10, 10]
    stop.set()
    await task
    await log.close()
    assert at_stage() == [0, 0, 0]  # its partitions given up: it holds nobody now
    after = [
        sample(
            "funnelstream_funnel_transitions_total",
            **labels,
            step=str(k),
            from_step=str(k - 1) if k > 1 else "",
        )
        for k in (1, 2, 3)
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [30, 20, 10]
    # the stream's steps are a minute apart: step 3 is reached 120 s after the start
    buckets = step_3_buckets()
    assert [a - b for a, b in zip(buckets, buckets_before, strict=True)] == [0, 10]


# A late event's corrections, counted once over a retried write: tests/processor/
# test_pipeline_late.py, test_a_retried_write_publishes_each_correction_once.
