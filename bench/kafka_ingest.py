"""Ingest into Kafka against a bare aiokafka producer (issue 13; `throughput.py --part kafka`).

figure    `funnelstream ingest --log-backend kafka` (split mode, as tests/kafka/ run it:
          tests/kafka/helpers.py `kafka_server`), a fresh topic of 8 partitions per run,
          driven by the raw-socket keep-alive clients of the other ingest parts
          (throughput.py `measure_http`): 100- and 500-event batches, plain JSON, 4
          clients, events/s answered 202.
baseline  a bare `AIOKafkaProducer` in its own process, configured as our Kafka log's
          producer (funnelstream/log/kafka.py: acks=all, idempotent, lz4, linger 5 ms,
          request timeout 10 s), sending the same events as ingest appends them (one
          record per event, key = project + visitor, value = the encoded event) to its own
          fresh topic of 8 partitions on the same broker, as fast as it can in the same
          shape as the HTTP load: 4 concurrent senders, each sending one batch of records
          and awaiting every acknowledgement before the next (what `KafkaLog.append`
          does per request).

The broker is one KRaft node started once per benchmark process by deploy/kafka/broker.sh,
the way tests/fixtures/kafka.py starts it (reusing its helpers), warmed up by 2 s of the
baseline, kept for every run (it sits idle while the other parts run) and stopped at
exit; `FUNNELSTREAM_TEST_KAFKA=host:port` uses a broker that is already running instead.

    python bench/throughput.py --part kafka --runs 3 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throughput import (  # noqa: E402
    PROJECT,
    UNLIMITED,
    Load,
    client_events,
    fmt,
    http_requests,
    measure_http,
    med,
    run_client,
)

from tests.fixtures.kafka import _broker_sh, _start_cluster  # noqa: E402
from tests.kafka.helpers import PARTITIONS, kafka_server, unique  # noqa: E402

KAFKA_LOADS = (
    Load("100-event batches, plain", 100, False, 4),
    Load("500-event batches, plain", 500, False, 4),
)
EVENTS = 50_000  # as the embedded ingest part: client_events(50_000), seed 7
_broker: str | None = None


def broker() -> str:
    """The bootstrap address; a broker is started on first use and stopped at exit."""
    global _broker
    if _broker is None:
        external = os.environ.get("FUNNELSTREAM_TEST_KAFKA")
        if external:
            _broker = external
        else:
            directory = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            cluster = _start_cluster(directory / "kafka", nodes=1)
            atexit.register(_broker_sh, "stop", "--dir", str(directory / "kafka"))  # runs first
            _broker = cluster.bootstrap
            # A fresh JVM is slow until warm; untimed, so the first figure is not the
            # one that pays for it.
            baseline(_broker, KAFKA_LOADS[0].events_per_request, KAFKA_LOADS[0].clients, 2)
    return _broker


# -- the baseline: a bare producer, in its own process -----------------------------------


def log_records(count: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, timestamp) of the clients' events, exactly as ingest appends them."""
    from schemas.events import Event, encode, parse_event

    now = int(time.time() * 1000)
    out = []
    for raw in client_events(count):
        event = parse_event(raw, project_id=PROJECT, received_at_ms=now)
        assert isinstance(event, Event), event
        out.append((event.partition_key(), encode(event), now))
    return out


async def bare_produce(
    bootstrap: str, topic: str, per_send: int, senders: int, seconds: float
) -> dict[str, float]:
    """Events/s acknowledged by one bare producer: `senders` loops, each sending
    `per_send` records and awaiting all of them before the next batch."""
    from aiokafka import AIOKafkaProducer

    from funnelstream.log.kafka import KafkaLog

    records = log_records(EVENTS)
    # The topic as our log creates it (replication, min.insync.replicas); untimed.
    admin = KafkaLog(bootstrap, client_id="bench-admin")
    await admin.ensure_topic(topic, PARTITIONS)
    await admin.close()
    defaults = KafkaLog(bootstrap)  # the settings our producer is built with
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="bench-bare",
        acks="all",
        enable_idempotence=True,
        compression_type=defaults.compression,
        linger_ms=defaults.linger_ms,
        request_timeout_ms=defaults.request_timeout_ms,
    )
    await producer.start()

    async def sender(start: int, until: float) -> tuple[int, float]:
        sent = 0
        i = start
        last = time.perf_counter()
        while last < until:
            futures = []
            for _ in range(per_send):
                key, value, ts = records[i % len(records)]
                i += 1
                futures.append(await producer.send(topic, value=value, key=key, timestamp_ms=ts))
            await asyncio.gather(*futures)
            sent += per_send
            last = time.perf_counter()
        return sent, last

    async def timed(for_s: float) -> float:
        started = time.perf_counter()
        step = len(records) // senders
        done = await asyncio.gather(*(sender(k * step, started + for_s) for k in range(senders)))
        return sum(d[0] for d in done) / (max(d[1] for d in done) - started)

    try:
        await timed(0.5)  # warm up: metadata, connections, as the HTTP warm-up
        rate = await timed(seconds)
    finally:
        await producer.stop()
    return {"eps": rate}


def baseline(bootstrap: str, per_send: int, senders: int, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--bootstrap",
            bootstrap,
            "--topic",
            unique("bench-bare"),
            "--per-send",
            str(per_send),
            "--senders",
            str(senders),
            "--seconds",
            str(seconds),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


# -- one run ------------------------------------------------------------------------------


def kafka_run(seconds: float) -> dict[str, dict[str, Any]]:
    """Per load: ingest → Kafka, then the bare producer, back to back on one broker."""
    bootstrap = broker()
    events = client_events(EVENTS)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = kafka_server(
            "ingest", Path(tmp) / "ingest", bootstrap, unique("bench-ingest"), **UNLIMITED
        ).start()
        try:
            for load in KAFKA_LOADS:
                requests = http_requests(load, events)
                ingest = measure_http(server.port, requests, load.clients, seconds)
                bare = baseline(bootstrap, load.events_per_request, load.clients, seconds)
                out[load.name] = {
                    "ingest_eps": ingest["rps"] * load.events_per_request,
                    "refused": ingest["refused"],
                    "producer_eps": bare["eps"],
                }
        finally:
            server.stop()
    return out


# -- report -------------------------------------------------------------------------------

NOTES = """- ingest → Kafka: one KRaft broker (deploy/kafka/broker.sh) on this machine, topics
  of 8 partitions, replication 1; the baseline is a bare aiokafka producer with our
  log's settings (acks=all, idempotent, lz4, linger 5 ms) in its own process, sending the
  same events as one record each in the HTTP load's shape (4 senders, one batch in
  flight each). The broker, the server and the clients share the 2 cores."""


def report_rows(runs: list[dict[str, dict[str, Any]]]) -> tuple[list[str], list[str], str]:
    """(table rows, per-run lines, notes) for throughput.py's report."""
    rows, per_run = [], []
    for load in KAFKA_LOADS:
        ingest = [r[load.name]["ingest_eps"] for r in runs]
        bare = [r[load.name]["producer_eps"] for r in runs]
        ratio = med([i / b for i, b in zip(ingest, bare, strict=True)])
        rows.append(
            f"| ingest → Kafka (`funnelstream ingest --log-backend kafka`), {load.name}, "
            f"{load.clients} clients | {fmt(med(ingest))} ev/s | bare aiokafka producer "
            f"{fmt(med(bare))} ev/s | {ratio:.3f} | — |"
        )
        refused = sum(r[load.name]["refused"] for r in runs)
        per_run.append(
            f"- ingest → Kafka {load.name}: ingest {[fmt(x) for x in ingest]}, bare producer "
            f"{[fmt(x) for x in bare]} ev/s; non-202 answers: {refused}"
        )
    return rows, per_run, NOTES


def main() -> None:
    """The baseline's own process: one measurement, printed as JSON."""
    parser = argparse.ArgumentParser(description="bare aiokafka producer baseline")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--per-send", type=int, required=True)
    parser.add_argument("--senders", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    result = run_client(
        bare_produce(args.bootstrap, args.topic, args.per_send, args.senders, args.seconds)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
