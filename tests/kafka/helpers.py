"""What the Kafka tests share: storefront traffic as log records, a fast producer, the
exact expected numbers, and split-mode processes configured for a broker.

Expected numbers come from the traffic generator (`storefront(...).reached`: how many
visitors reached each step), never from the system under test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from funnelstream.clickhouse import ClickHouse
from funnelstream.demo import DemoTraffic, storefront
from funnelstream.log import LogRecord
from funnelstream.log.kafka import KafkaLog
from schemas.events import Event, encode, parse_event
from schemas.funnels import FunnelDefinition
from tests.e2e.server import CONFIG, READ, Server

PROJECT = "shop"  # the project of tests/e2e/server.py's CONFIG
PARTITIONS = 8
FUNNEL = FunnelDefinition.model_validate(
    {
        "id": "checkout",
        "project": PROJECT,
        "window_seconds": 86400,
        "steps": [
            {"event": s}
            for s in ("page_view", "product_view", "add_to_cart", "checkout_started", "purchase")
        ],
    }
)
EVERYTHING = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def unique(prefix: str) -> str:
    """A topic or group name no other test uses (the session broker is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Traffic:
    demo: DemoTraffic
    events: list[Event]

    @property
    def reached(self) -> list[int]:
        return self.demo.reached


def traffic(visitors: int, seed: int) -> Traffic:
    """Storefront traffic of the last two hours, validated as ingest would."""
    now = int(time.time() * 1000)
    demo = storefront(visitors=visitors, start_ms=now - 7200_000, seed=seed)
    events = []
    for raw in demo.events:
        parsed = parse_event(raw, project_id=PROJECT, received_at_ms=now)
        assert isinstance(parsed, Event), parsed
        events.append(parsed)
    return Traffic(demo, events)


def records(events: Sequence[Event]) -> list[LogRecord]:
    """Log records exactly as ingest appends them (key = project + visitor)."""
    return [LogRecord(e.partition_key(), encode(e), e.received_at_ms) for e in events]


async def produce(log: KafkaLog, topic: str, events: Sequence[Event], chunk: int = 2000) -> None:
    """Append in order (one producer, chunks sent one after another: per visitor order
    is kept because a visitor's events share a partition)."""
    producer = log.producer(topic)
    await producer.start()
    try:
        for i in range(0, len(events), chunk):
            await producer.append(records(events[i : i + chunk]))
    finally:
        await producer.stop()


def expected_levels(reached: list[int]) -> dict[int, int]:
    """Visitors whose deepest step is k (1-based), from visitors reaching each step."""
    out = {}
    for k, n in enumerate(reached, start=1):
        deeper = reached[k] if k < len(reached) else 0
        if n - deeper:
            out[k] = n - deeper
    return out


def assert_tables_exact(ch: ClickHouse, t: Traffic) -> None:
    levels = ch.query_rows_sync(
        "SELECT level, count() FROM funnel_state FINAL WHERE funnel_id = 'checkout' "
        "GROUP BY level ORDER BY level"
    )
    assert {int(k): int(n) for k, n in levels} == expected_levels(t.reached)
    ((stored, visitors),) = ch.query_rows_sync(
        "SELECT count(), uniqExact(visitor_id) FROM events FINAL"
    )
    assert (stored, visitors) == (len(t.events), t.reached[0])
    ((transitions,),) = ch.query_rows_sync("SELECT count() FROM funnel_transitions FINAL")
    assert transitions == sum(t.reached)
    ((dead,),) = ch.query_rows_sync("SELECT count() FROM dead_letters FINAL")
    assert dead == 0


async def committed_total(log: KafkaLog, topic: str, group: str) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of end offsets) over the topic, read by
    a consumer that does not join the group."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=log.bootstrap_servers, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        committed = [await consumer.committed(tp) for tp in tps]
        return sum(c or 0 for c in committed), sum(ends.values())
    finally:
        await consumer.stop()


async def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.2) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- split-mode processes -------------------------------------------------------------


def kafka_server(
    command: str,
    data_dir: Path,
    bootstrap: str,
    topic: str,
    group: str = "funnelstream-processor",
    config: str = CONFIG,
    **env: str,
) -> Server:
    """`funnelstream <command> --log-backend kafka` on its own port and data dir."""
    return Server(
        data_dir,
        config,
        command=command,
        args=["--log-backend", "kafka", "--kafka-bootstrap", bootstrap],
        cwd=None,
        FUNNELSTREAM_TOPIC=topic,
        FUNNELSTREAM_GROUP=group,
        FUNNELSTREAM_PARTITIONS=str(PARTITIONS),
        **env,
    )


def health(server: Server) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{server.base}/healthz", timeout=30).json()
    return result


def wait_caught_up(server: Server, events: int, timeout: float = 180) -> dict[str, Any]:
    """Until the processor holds every partition, has committed everything and the
    query API counts `events` stored events."""
    deadline = time.monotonic() + timeout
    h: dict[str, Any] = {}
    while time.monotonic() < deadline:
        h = health(server)
        if h.get("lag") == 0 and len(h.get("partitions", [])) == PARTITIONS:
            stats = httpx.get(f"{server.base}/v1/stats", headers=READ, timeout=60).json()
            if stats["events"] == events:
                return h
        time.sleep(0.25)
    raise AssertionError(f"not caught up in {timeout}s: {h}")


def metric_samples(server: Server, name: str) -> dict[str, float]:
    """{label value or "": sample} of one metric from the process's /metrics."""
    text = httpx.get(f"{server.base}/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            label = head.split('"')[1] if '"' in head else ""
            out[label] = float(value)
    return out
