"""What a new funnel's backfill costs with 1 vs many funnels saved.

A storefront history is processed into a fresh embedded engine (embedded log, real
processor) with `saved` funnels defined (1, then `--funnels`), each on the storefront's
steps, so every visitor's state carries all of them. Then new funnels are saved one at a
time while the processor runs, and each is timed from the save to its live state being
built on every held partition (the chunked backfill, processor/backfills.py). Also counted:
the visitor-state rows (whole states, or one funnel's progress) and their bytes the
backfill wrote. Median of `--runs`.

    python bench/backfill.py --events 20000 --funnels 200 --runs 3

Writes bench/results/backfill.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


class Counting(ClickHouse):
    """The real engine, counting the visitor-state rows and bytes written."""

    def __init__(self, real: ClickHouse) -> None:
        self.__dict__.update(real.__dict__)
        self.state_rows = 0
        self.state_bytes = 0

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        # Whole visitor states, or one funnel's progress per visitor (a backfill).
        column = {"processor_state": 3, "visitor_funnel_progress": 5}.get(table)
        if column is not None:
            self.state_rows += len(rows)
            self.state_bytes += sum(len(str(r[column])) for r in rows)
        await super().insert(table, rows, columns)


def funnel(funnel_id: str, window: int) -> FunnelDefinition:
    return FunnelDefinition.model_validate(
        {
            "id": funnel_id,
            "project": PROJECT,
            "window_seconds": window,
            "steps": [{"event": s} for s in STEPS],
        }
    )


def history(events: int) -> list[Event]:
    now = int(time.time() * 1000)
    demo = storefront(visitors=events // 3, start_ms=now - 7_200_000, seed=7)
    out = []
    for raw in demo.events[:events]:
        parsed = parse_event(raw, project_id=PROJECT, received_at_ms=now)
        assert isinstance(parsed, Event), parsed
        out.append(parsed)
    return out


async def until(condition: Any, limit: float = 3600.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("bench step did not finish")
        await asyncio.sleep(0.005)


async def measure(events: list[Event], saved: int, runs: int, chunk: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ch = ClickHouse(f"chdb://{Path(tmp) / 'ch'}")
        migrate(ch)
        counting = Counting(ch)
        log = EmbeddedLog(Path(tmp) / "log", default_partitions=PARTITIONS)
        producer = log.producer("events")
        await producer.start()
        await producer.append([LogRecord(e.partition_key(), encode(e), 0) for e in events])
        catalog = FunnelCatalog([funnel(f"saved{i}", 3600 + i) for i in range(saved)])
        config = ProcessorConfig(backfill_chunk_visitors=chunk)
        processor = Processor(log, counting, catalog, config)
        stop = asyncio.Event()
        task = asyncio.create_task(processor.run(stop))

        def built(funnel_id: str) -> bool:
            held = processor.assignment()
            return bool(held) and processor.backfilled(PROJECT, funnel_id) >= held

        await until(
            lambda: (
                processor.processed_messages >= len(events)
                and all(built(f.id) for f in catalog.all())
            )
        )
        seconds, rows, size = [], [], []
        for k in range(runs):
            added = funnel(f"new{k}", 1800)
            counting.state_rows = counting.state_bytes = 0
            t0 = time.monotonic()
            catalog.upsert(added)
            await until(lambda: built(added.id))  # noqa: B023 (awaited in this turn)
            seconds.append(time.monotonic() - t0)
            rows.append(counting.state_rows)
            size.append(counting.state_bytes)
        stop.set()
        await task
        await log.close()
        ch.close()
    return {"seconds": seconds, "rows": rows, "bytes": size}


async def run(args: argparse.Namespace) -> list[tuple[int, dict[str, Any]]]:
    events = history(args.events)
    return [
        (saved, await measure(events, saved, args.runs, args.chunk)) for saved in (1, args.funnels)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--funnels", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/backfill.md"))
    args = parser.parse_args()
    results = asyncio.run(run(args))
    base = statistics.median(results[0][1]["seconds"])
    lines = [
        "# A new funnel's backfill, 1 vs many funnels saved",
        "",
        f"Command: `python bench/backfill.py --events {args.events} --funnels {args.funnels} "
        f"--runs {args.runs} --chunk {args.chunk}`",
        "",
        f"{args.events:,} storefront events over {PARTITIONS} partitions of the embedded log, "
        "one processor; the saved funnels are all on the storefront's steps, so every "
        "visitor's state carries each of them. A new funnel is saved while the processor "
        "runs and timed until its live state is built on every partition; median of "
        f"{args.runs}.",
        "",
        "| funnels saved | backfill seconds (median) | runs | vs 1 | visitor states written "
        "| their bytes |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for saved, r in results:
        med = statistics.median(r["seconds"])
        runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
        lines.append(
            f"| {saved} | {med:.2f} | {runs} | {med / base:.2f} "
            f"| {statistics.median(r['rows']):,.0f} | {statistics.median(r['bytes']):,.0f} |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
