"""What live state counted by user costs the processor.

The same storefront traffic (a share of visitors log in after their first events, several
visitors per user) is processed from a filled embedded log into a fresh embedded engine,
once with the five-step checkout funnel counted by visitor (the baseline) and once with
the same funnel counted by user, where every batch rebuilds the users it touched from
the stored events (processor/user_funnels.py). Runs of the two alternate, so both see
the same machine load; medians and their ratio are reported.

    python bench/user_funnels.py --events 50000 --runs 3

Writes bench/results/user_funnels.md.
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

from funnelstream.clickhouse import ClickHouse, migrate  # noqa: E402
from funnelstream.demo import STEPS, storefront  # noqa: E402
from funnelstream.log import LogRecord  # noqa: E402
from funnelstream.log.embedded import EmbeddedLog  # noqa: E402
from processor.catalog import FunnelCatalog  # noqa: E402
from processor.pipeline import Processor  # noqa: E402
from schemas.events import Event, encode, parse_event  # noqa: E402
from schemas.funnels import FunnelDefinition  # noqa: E402

PROJECT = "bench"
PARTITIONS = 4


def funnel(count_by: str) -> FunnelDefinition:
    return FunnelDefinition.model_validate(
        {
            "id": "checkout",
            "project": PROJECT,
            "window_seconds": 86400,
            "steps": [{"event": s} for s in STEPS],
            "count_by": count_by,
        }
    )


def traffic(events: int, identified: float, seed: int = 3) -> list[Event]:
    """Storefront events; `identified` of the visitors log in at their second event, as
    one of a third as many users (so about three visitors per user)."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    demo = storefront(visitors=events // 2, start_ms=now - 7_200_000, seed=seed)
    users: dict[str, str] = {}
    seen: dict[str, int] = {}
    out = []
    for raw in demo.events[:events]:
        visitor = str(raw["visitor_id"])
        if visitor not in users:
            logs_in = rng.random() < identified
            pool = max(1, int(events // 2 * identified / 3))
            users[visitor] = f"user{rng.randrange(pool)}" if logs_in else ""
        seen[visitor] = seen.get(visitor, 0) + 1
        if users[visitor] and seen[visitor] >= 2:
            raw = {**raw, "user_id": users[visitor]}
        parsed = parse_event(raw, project_id=PROJECT, received_at_ms=now)
        assert isinstance(parsed, Event), parsed
        out.append(parsed)
    return out


async def fill(log: EmbeddedLog, events: list[Event]) -> None:
    await log.ensure_topic("events", PARTITIONS)
    producer = log.producer("events")
    await producer.start()
    for i in range(0, len(events), 1000):
        chunk = events[i : i + 1000]
        await producer.append([LogRecord(e.partition_key(), encode(e), 0) for e in chunk])


def empty_tables(ch: ClickHouse) -> None:
    tables = ch.query_rows_sync(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND name != 'schema_migrations' AND engine != 'MaterializedView'"
    )
    for (name,) in tables:
        ch.command_sync(f"TRUNCATE TABLE {name}")


async def process(ch: ClickHouse, events: list[Event], count_by: str) -> float:
    """Events/s of one processor from a full log until every message is written."""
    empty_tables(ch)
    with tempfile.TemporaryDirectory() as d:
        log = EmbeddedLog(Path(d) / "log", default_partitions=PARTITIONS)
        await fill(log, events)
        processor = Processor(log, ch, FunnelCatalog([funnel(count_by)]))
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(processor.run(stop))
        while processor.processed_messages < len(events):
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        await log.close()
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--identified", type=float, default=0.3)
    args = parser.parse_args()
    events = traffic(args.events, args.identified)
    runs: dict[str, list[float]] = {"visitor": [], "user": []}
    # chdb opens one data path per process: one engine, emptied before each run.
    with tempfile.TemporaryDirectory() as d:
        ch = ClickHouse(f"chdb://{d}")
        migrate(ch)
        for _ in range(args.runs):
            for count_by in runs:
                runs[count_by].append(asyncio.run(process(ch, events, count_by)))
        ch.close()
    base = statistics.median(runs["visitor"])
    user = statistics.median(runs["user"])
    table = "\n".join(
        [
            f"Command: `python bench/user_funnels.py --events {args.events} --runs {args.runs}"
            f" --identified {args.identified}`",
            "",
            f"{len(events)} storefront events over {PARTITIONS} partitions of the embedded log,"
            f" {args.identified:.0%} of visitors logging in at their second event, as users"
            " drawn from a pool a third their number (visitors with one event never log in);"
            " one processor, tables emptied before each run, runs of the"
            f" two funnels alternating; median of {args.runs}. Machine: 2 cores.",
            "",
            "| funnel | processor events/s (median) | runs | vs by visitor |",
            "|---|---:|---|---:|",
            f"| checkout counted by visitor (baseline) | {base:,.0f} |"
            f" {', '.join(f'{r:,.0f}' for r in runs['visitor'])} | 1.00 |",
            f"| checkout counted by user | {user:,.0f} |"
            f" {', '.join(f'{r:,.0f}' for r in runs['user'])} | {user / base:.2f} |",
        ]
    )
    print(table)
    out = Path(__file__).parent / "results" / "user_funnels.md"
    out.write_text("# Live state counted by user: processor cost\n\n" + table + "\n")


if __name__ == "__main__":
    main()
