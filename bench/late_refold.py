"""What a late event and a new funnel cost the processor.

A storefront history is processed into a fresh embedded engine (embedded log, real
processor). Then, alternating, one event at a time:

* an in-order event of a random visitor (the baseline: a batch with one event), and
* a late event of another random visitor, two days older than its newest, which re-folds
  that visitor from its stored events and writes the corrections (processor/refold.py).

Each is timed from the append to the processor having written and committed it; medians
and p99 of both, and their ratio. Then a new funnel is saved and the time until its live
state is built from the stored events (the backfill) is measured, against a plain count
of the same events in the same run.

    python bench/late_refold.py --events 50000 --late 200

Writes bench/results/late_refold.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnelstream import metrics  # noqa: E402
from funnelstream.clickhouse import ClickHouse, migrate  # noqa: E402
from funnelstream.demo import STEPS, storefront  # noqa: E402
from funnelstream.log import LogRecord  # noqa: E402
from funnelstream.log.embedded import EmbeddedLog  # noqa: E402
from processor.catalog import FunnelCatalog  # noqa: E402
from processor.pipeline import Processor, ProcessorConfig  # noqa: E402
from schemas.events import Event, encode, parse_event  # noqa: E402
from schemas.funnels import FunnelDefinition  # noqa: E402

PROJECT = "bench"
PARTITIONS = 4
DAY_MS = 86_400_000


def funnel(funnel_id: str, steps: list[str]) -> FunnelDefinition:
    return FunnelDefinition.model_validate(
        {
            "id": funnel_id,
            "project": PROJECT,
            "window_seconds": 86400,
            "steps": [{"event": s} for s in steps],
        }
    )


def history(events: int, seed: int) -> list[Event]:
    now = int(time.time() * 1000)
    demo = storefront(visitors=events // 3, start_ms=now - 7_200_000, seed=seed)
    out = []
    for raw in demo.events[:events]:
        parsed = parse_event(raw, project_id=PROJECT, received_at_ms=now)
        assert isinstance(parsed, Event), parsed
        out.append(parsed)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_processed(processor: Processor, count: int, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while processor.processed_messages < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"processed {processor.processed_messages} of {count}")
        await asyncio.sleep(0.001)


async def run(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ch = ClickHouse(f"chdb://{tmp}/ch")
        migrate(ch)
        log = EmbeddedLog(Path(tmp) / "log", default_partitions=PARTITIONS)
        producer = log.producer("events")
        await producer.start()
        events = history(args.events, args.seed)
        await producer.append([LogRecord(e.partition_key(), encode(e), 0) for e in events])
        catalog = FunnelCatalog([funnel("checkout", list(STEPS))])
        config = ProcessorConfig(batch_max_seconds=0.001)
        processor = Processor(log, ch, catalog, config)
        stop = asyncio.Event()
        task = asyncio.create_task(processor.run(stop))
        started = time.monotonic()
        await wait_processed(processor, len(events), 1200)
        load_seconds = time.monotonic() - started

        newest: dict[str, int] = {}
        for e in events:
            newest[e.visitor_id] = max(newest.get(e.visitor_id, 0), e.timestamp_ms)
        visitors = sorted(newest)
        sent = len(events)
        ordered: list[float] = []
        late: list[float] = []
        refold_sum = "funnelstream_processor_refold_seconds_sum"
        refold_inner: list[float] = []
        for k in range(args.late):
            for is_late in (False, True):
                visitor = rng.choice(visitors)
                ts = newest[visitor] + 1000 if not is_late else newest[visitor] - 2 * DAY_MS
                if not is_late:
                    newest[visitor] = ts
                event = Event(
                    PROJECT,
                    f"00000000-0000-4000-8000-{k * 2 + is_late:012d}",
                    rng.choice(STEPS),
                    visitor,
                    ts,
                    ts,
                )
                before = metrics.REGISTRY.get_sample_value(refold_sum) or 0.0
                t0 = time.monotonic()
                await producer.append([LogRecord(event.partition_key(), encode(event), 0)])
                sent += 1
                await wait_processed(processor, sent)
                (late if is_late else ordered).append(time.monotonic() - t0)
                if is_late:
                    refold_inner.append(
                        (metrics.REGISTRY.get_sample_value(refold_sum) or 0) - before
                    )

        # A new funnel: its live state is built from the stored events (backfill).
        t0 = time.monotonic()
        ((stored,),) = await ch.query_rows(
            "SELECT count() FROM events FINAL WHERE project_id = {p:String}", {"p": PROJECT}
        )
        count_seconds = time.monotonic() - t0
        added = funnel("browse", ["page_view", "product_view"])
        t0 = time.monotonic()
        catalog.upsert(added)
        while True:
            held = processor.assignment()
            if held and processor.backfilled(PROJECT, "browse") >= held:
                break
            await asyncio.sleep(0.005)
        backfill_seconds = time.monotonic() - t0

        stop.set()
        await task
        await producer.stop()
        await log.close()
        ch.close()
    return {
        "events": len(events),
        "stored": int(stored),
        "visitors": len(visitors),
        "load_seconds": load_seconds,
        "ordered": ordered,
        "late": late,
        "refold": refold_inner,
        "count_seconds": count_seconds,
        "backfill_seconds": backfill_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--late", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/late_refold.md"))
    args = parser.parse_args()
    r = asyncio.run(run(args))
    ordered, late, refold = r["ordered"], r["late"], r["refold"]
    assert isinstance(ordered, list) and isinstance(late, list) and isinstance(refold, list)
    med_o, med_l = statistics.median(ordered), statistics.median(late)
    lines = [
        "# Late events and new funnels",
        "",
        f"Command: `python bench/late_refold.py --events {args.events} --late {args.late}`",
        "",
        f"History: {r['events']:,} storefront events, {r['visitors']:,} visitors, 4 "
        f"partitions, processed in {r['load_seconds']:.1f} s. Then {args.late} in-order and "
        f"{args.late} late events (two days older than their visitor's newest), alternating, "
        "one at a time; each timed from append to written and committed.",
        "",
        "| one event | median | p99 |",
        "|---|---:|---:|",
        f"| in order (baseline) | {med_o * 1000:.1f} ms | {pct(ordered, 0.99) * 1000:.1f} ms |",
        f"| late: re-fold of its visitor | {med_l * 1000:.1f} ms "
        f"| {pct(late, 0.99) * 1000:.1f} ms |",
        f"| of which the re-fold step (reads, fold, corrections) | "
        f"{statistics.median(refold) * 1000:.1f} ms | {pct(refold, 0.99) * 1000:.1f} ms |",
        "",
        f"Late / in order, medians: **{med_l / med_o:.2f}x**.",
        "",
        f"New funnel backfill over {r['stored']:,} stored events: "
        f"**{r['backfill_seconds']:.2f} s** "
        f"(a plain `count()` of the same events: {r['count_seconds'] * 1000:.0f} ms).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
