"""Split mode throughput and freshness through a real Kafka broker.

Per run, on a fresh topic:
  produce (raw)   events/s appended by `KafkaLog` producers (acks=all, idempotent, lz4),
                  batches of 100, 8 appends in flight: the baseline
  produce (HTTP)  events/s acknowledged (202) by a `funnelstream ingest --log-backend
                  kafka` process, batches of 100 from 8 concurrent HTTP clients
  processor       events/s of one `funnelstream process` process (chdb) working through
                  a topic filled up front, from its partition assignment to lag 0
  freshness       p50/p99 seconds from ingest receiving an event to the processor
                  committing it, from the processor's freshness histogram, while
                  `funnelstream serve --log-backend kafka` takes a steady 2,000 events/s

    python bench/kafka_pipeline.py --events 100000 --runs 3

Starts a single-node broker with deploy/kafka/broker.sh unless --bootstrap is given.
Prints a markdown table (medians) and writes it to bench/results/kafka_pipeline.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from funnelstream.log.kafka import KafkaLog  # noqa: E402
from tests.e2e.server import WRITE, Server  # noqa: E402
from tests.fixtures.kafka import free_port_range  # noqa: E402
from tests.kafka.helpers import (  # noqa: E402
    PARTITIONS,
    health,
    kafka_server,
    metric_samples,
    records,
    traffic,
)

BATCH = 100
CONCURRENCY = 8
FRESHNESS_RATE = 2000  # events/s
FRESHNESS_SECONDS = 15


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def raw_produce(bootstrap: str, topic: str, batches: list[list[object]]) -> float:
    log = KafkaLog(bootstrap, client_id="bench")
    await log.ensure_topic(topic, PARTITIONS)
    producer = log.producer(topic)
    await producer.start()
    # Untimed: the first append fetches the new topic's metadata (and may meet leader
    # elections that are still settling).
    await producer.append(batches[0])  # type: ignore[arg-type]
    queue = list(reversed(batches[1:]))

    async def worker() -> None:
        while queue:
            await producer.append(queue.pop())  # type: ignore[arg-type]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    await producer.stop()
    await log.close()
    return elapsed


async def http_send(base: str, bodies: list[bytes], pace_s: float = 0.0) -> float:
    queue = list(reversed(bodies))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            r = await client.post(
                "/v1/events", content=body, headers={**WRITE, "Content-Type": "application/json"}
            )
            r.raise_for_status()
            if pace_s:
                await asyncio.sleep(pace_s)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def histogram_quantile(buckets: dict[str, float], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    bounds = sorted((float(le), n) for le, n in buckets.items() if le != "+Inf")
    total = buckets["+Inf"]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return bounds[-1][0]


def freshness_buckets(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.base}/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("funnelstream_processor_freshness_seconds_bucket{"):
            head, value = line.rsplit(" ", 1)
            out[head.split('le="')[1].split('"')[0]] = float(value)
    return out


def one_run(bootstrap: str, events: int, work: Path) -> dict[str, float]:
    t = traffic(visitors=events * 10 // 24, seed=int(time.time()))
    evs = t.events[:events]
    raw_batches = [records(evs[i : i + BATCH]) for i in range(0, len(evs), BATCH)]
    bodies = [
        orjson.dumps({"batch": t.demo.events[i : i + BATCH]}) for i in range(0, len(evs), BATCH)
    ]
    out: dict[str, float] = {}

    # 1. raw producer, and the topic the processor run reads afterwards
    topic = unique("bench-raw")
    elapsed = asyncio.run(raw_produce(bootstrap, topic, raw_batches))  # type: ignore[arg-type]
    out["produce_raw"] = (len(evs) - len(raw_batches[0])) / elapsed

    # 2. one processor process on the full topic
    proc = kafka_server("process", work / "process", bootstrap, topic, unique("g"))
    proc.start()
    try:
        while not health(proc).get("partitions"):
            time.sleep(0.05)
        started = time.perf_counter()
        while True:
            h = health(proc)
            if h.get("lag") == 0 and len(h["partitions"]) == PARTITIONS:
                break
            time.sleep(0.1)
        out["processor"] = len(evs) / (time.perf_counter() - started)
    finally:
        proc.stop()

    # 3. HTTP ingest process
    topic = unique("bench-http")
    ingest = kafka_server("ingest", work / "ingest", bootstrap, topic)
    ingest.start()
    try:
        out["produce_http"] = len(evs) / asyncio.run(http_send(ingest.base, bodies))
    finally:
        ingest.stop()

    # 4. freshness at a steady rate through serve (ingest + processor + query)
    topic = unique("bench-fresh")
    serve = kafka_server("serve", work / "serve", bootstrap, topic, unique("g"))
    serve.start()
    try:
        while len(health(serve).get("partitions", [])) < PARTITIONS:
            time.sleep(0.05)
        n = FRESHNESS_RATE * FRESHNESS_SECONDS // BATCH
        pace = CONCURRENCY * BATCH / FRESHNESS_RATE
        asyncio.run(http_send(serve.base, bodies[:n], pace_s=pace))
        while health(serve).get("lag") != 0:
            time.sleep(0.1)
        buckets = freshness_buckets(serve)
        out["fresh_p50"] = histogram_quantile(buckets, 0.5)
        out["fresh_p99"] = histogram_quantile(buckets, 0.99)
        out["fresh_count"] = buckets["+Inf"]
        assert metric_samples(serve, "funnelstream_processor_lag_messages")
    finally:
        serve.stop()
    return out


def start_broker(work: Path) -> str:
    port = free_port_range(2)
    proc = subprocess.run(
        ["bash", str(ROOT / "deploy/kafka/broker.sh"), "start", "--port", str(port), "--dir",
         str(work / "kafka")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        bootstrap = args.bootstrap or start_broker(work)
        try:
            runs = []
            for i in range(args.runs):
                run_dir = work / f"run{i}"
                run_dir.mkdir()
                runs.append(one_run(bootstrap, args.events, run_dir))
                print(f"run {i + 1}: {runs[-1]}", flush=True)
        finally:
            if not args.bootstrap:
                subprocess.run(
                    ["bash", str(ROOT / "deploy/kafka/broker.sh"), "stop", "--dir",
                     str(work / "kafka")],
                    check=False,
                )  # fmt: skip

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    raw = med("produce_raw")
    per_run = "; ".join(
        f"raw {r['produce_raw']:,.0f}, http {r['produce_http']:,.0f}, "
        f"processor {r['processor']:,.0f}, p50 {r['fresh_p50']:.3f}s, p99 {r['fresh_p99']:.3f}s"
        for r in runs
    )
    table = "\n".join(
        [
            f"Command: `python bench/kafka_pipeline.py --events {args.events} --runs {args.runs}`",
            "",
            f"Machine: {platform.machine()}, 2 cores, Python {platform.python_version()}; "
            "one KRaft broker from deploy/kafka/broker.sh on the same machine, topic of "
            f"{PARTITIONS} partitions (replication factor 1). Recorded "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median of {args.runs} runs.",
            f"{args.events} events per throughput measure, batches of {BATCH}, "
            f"{CONCURRENCY} requests or appends in flight. Load average at the end: "
            f"{os.getloadavg()[0]:.1f} (other work on the machine inflates every number).",
            f"Per run: {per_run}.",
            "",
            "| measure | value | vs raw producer |",
            "|---|---:|---:|",
            f"| produce, raw `KafkaLog` producer (baseline) | {raw:,.0f} events/s | 1.00 |",
            f"| produce through HTTP ingest (`funnelstream ingest`, 202 acknowledged) | "
            f"{med('produce_http'):,.0f} events/s | {med('produce_http') / raw:.2f} |",
            f"| one processor process (`funnelstream process`, chdb), assignment → lag 0 | "
            f"{med('processor'):,.0f} events/s | {med('processor') / raw:.2f} |",
            f"| freshness p50 (ingest receipt → committed), {FRESHNESS_RATE:,} events/s "
            f"through `serve --log-backend kafka` | {med('fresh_p50'):.3f} s | |",
            f"| freshness p99, same run | {med('fresh_p99'):.3f} s | |",
            "",
            "Freshness quantiles are interpolated inside the histogram's buckets "
            "(0.05, 0.1, 0.25, 0.5, 1, 2, 5 s ...), as Prometheus' `histogram_quantile` does.",
        ]
    )
    print(table)
    out = Path(__file__).parent / "results" / "kafka_pipeline.md"
    out.write_text("# Kafka pipeline throughput and freshness\n\n" + table + "\n")


if __name__ == "__main__":
    main()
