"""Embedded path throughput: HTTP ingest → SQLite log → processor → chdb.

Measures, per run, on a fresh data directory:
  ingest   events/s acknowledged (202) by `funnelstream serve`, batches of 100 events
           sent by 8 concurrent HTTP clients
  e2e      events/s from the first request until the processor's lag is 0
  baseline events/s of the bare embedded log (`EmbeddedLog.append`, same batches, same
           concurrency, no HTTP, no processor), measured in the same run, so the ratio
           says what HTTP + validation cost on this machine

    python bench/embedded_pipeline.py --events 100000 --runs 3

Prints a markdown table (medians) and writes it to bench/results/embedded_pipeline.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnelstream.demo import storefront  # noqa: E402
from funnelstream.log import LogRecord  # noqa: E402
from funnelstream.log.embedded import EmbeddedLog  # noqa: E402
from tests.e2e.server import WRITE, Server  # noqa: E402

BATCH = 100
CLIENTS = 8


def make_batches(events: int) -> list[bytes]:
    traffic = storefront(visitors=events // 2, start_ms=int(time.time() * 1000) - 7200_000)
    evs = traffic.events[:events]
    return [orjson.dumps({"batch": evs[i : i + BATCH]}) for i in range(0, len(evs), BATCH)]


async def send_all(base: str, batches: list[bytes]) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            r = await client.post(
                "/v1/events", content=body, headers={**WRITE, "Content-Type": "application/json"}
            )
            r.raise_for_status()

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(CLIENTS)))
    return time.perf_counter() - started


async def baseline(batches: list[bytes]) -> float:
    records = [
        [
            LogRecord(str(e["visitor_id"]).encode(), orjson.dumps(e), 0)
            for e in orjson.loads(b)["batch"]
        ]
        for b in batches
    ]
    with tempfile.TemporaryDirectory() as d:
        log = EmbeddedLog(Path(d))
        producer = log.producer("events")
        await producer.start()
        queue = list(records)

        async def worker() -> None:
            while queue:
                await producer.append(queue.pop())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - started
        await log.close()
    return elapsed


def one_run(events: int, batches: list[bytes]) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as d:
        server = Server(Path(d) / "data").start()
        try:
            started = time.perf_counter()
            ingest_s = asyncio.run(send_all(server.base, batches))
            server.wait_processed(timeout=600)
            e2e_s = time.perf_counter() - started
        finally:
            server.stop()
    base_s = asyncio.run(baseline(batches))
    return events / ingest_s, events / e2e_s, events / base_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    batches = make_batches(args.events)
    events = sum(len(orjson.loads(b)["batch"]) for b in batches)
    runs = [one_run(events, batches) for _ in range(args.runs)]
    ingest = statistics.median(r[0] for r in runs)
    e2e = statistics.median(r[1] for r in runs)
    base = statistics.median(r[2] for r in runs)
    table = "\n".join(
        [
            f"Command: `python bench/embedded_pipeline.py --events {args.events} "
            f"--runs {args.runs}`",
            "",
            f"{events} events, batches of {BATCH}, {CLIENTS} concurrent clients on the same "
            f"2-core machine, median of {args.runs} runs.",
            f"Per run (ingest, e2e, baseline): {[tuple(round(x) for x in r) for r in runs]}",
            "",
            "| measure | events/s | vs bare log |",
            "|---|---:|---:|",
            f"| bare embedded log append (baseline) | {base:,.0f} | 1.00 |",
            f"| HTTP ingest, 202 acknowledged | {ingest:,.0f} | {ingest / base:.2f} |",
            f"| end to end (sent → processed into ClickHouse) | {e2e:,.0f} | {e2e / base:.2f} |",
        ]
    )
    print(table)
    out = Path(__file__).parent / "results" / "embedded_pipeline.md"
    out.write_text("# Embedded pipeline throughput\n\n" + table + "\n")


if __name__ == "__main__":
    main()
