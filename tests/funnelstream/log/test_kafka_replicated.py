"""Kafka with replication: a 3-node cluster, topics with RF 3 and min.insync.replicas 2.

What we rely on in production: losing one broker neither stops ingest nor loses an
acknowledged event, and losing two makes `append` refuse (503) instead of acknowledging
writes that only one broker holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from funnelstream.log import LogMessage, LogRecord, LogUnavailable
from funnelstream.log.kafka import KafkaLog
from tests.fixtures.kafka import KafkaCluster

pytestmark = pytest.mark.kafka

PARTITIONS = 6


def records(start: int, count: int) -> list[LogRecord]:
    return [
        LogRecord(key=f"v{i % 30}".encode(), value=f"event-{i}".encode(), timestamp_ms=i)
        for i in range(start, start + count)
    ]


@pytest.fixture
async def replicated(kafka_cluster3: KafkaCluster) -> AsyncIterator[tuple[KafkaLog, str]]:
    log = KafkaLog(
        kafka_cluster3.bootstrap,
        client_id="replicated-test",
        request_timeout_ms=5000,
        delivery_timeout_ms=8000,
    )
    topic = f"replicated-{uuid.uuid4().hex[:12]}"
    await log.ensure_topic(topic, PARTITIONS)
    try:
        yield log, topic
    finally:
        await log.close()
        # Leave the session's cluster whole for the next test, whatever this one stopped.
        # Together: with two nodes down, one alone cannot reach a controller quorum.
        await asyncio.gather(
            *(
                asyncio.to_thread(kafka_cluster3.start_node, node)
                for node in range(kafka_cluster3.nodes)
            )
        )


async def read_all(log: KafkaLog, topic: str, count: int) -> list[LogMessage]:
    consumer = log.consumer(topic, "readers")
    await consumer.start()
    got: list[LogMessage] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(got) < count and loop.time() < deadline:
            got.extend(await consumer.poll(max_records=500, timeout_s=0.5))
    finally:
        await consumer.stop()
    return got


async def test_topic_is_replicated_three_ways(
    kafka_cluster3: KafkaCluster, replicated: tuple[KafkaLog, str]
) -> None:
    _, topic = replicated
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster3.bootstrap)
    await admin.start()
    try:
        # A new topic reaches every broker's metadata a moment after it is created: the
        # broker answering may not list its partitions yet.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            (described,) = await admin.describe_topics([topic])
            if described["partitions"] or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        (config,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    assert len(described["partitions"]) == PARTITIONS
    assert all(len(p["replicas"]) == 3 for p in described["partitions"])
    entries = {
        e["config_names"]: e["config_value"]
        for e in config.to_object()["resources"][0]["config_entries"]
    }
    assert entries["min.insync.replicas"] == "2"


async def test_append_survives_one_broker_down(
    kafka_cluster3: KafkaCluster, replicated: tuple[KafkaLog, str]
) -> None:
    log, topic = replicated
    producer = log.producer(topic)
    await producer.start()
    try:
        await producer.append(records(0, 100))
        # Node 0 is also in the bootstrap list and leads some partitions.
        await asyncio.to_thread(kafka_cluster3.stop_node, 0)
        await producer.append(records(100, 100))
    finally:
        await producer.stop()

    got = await read_all(log, topic, 200)
    assert sorted(m.value for m in got) == sorted(r.value for r in records(0, 200))
    offsets: dict[int, list[int]] = defaultdict(list)
    for m in got:
        offsets[m.partition].append(m.offset)
    assert all(o == list(range(len(o))) for o in offsets.values())


async def test_append_refused_without_enough_insync_replicas(
    kafka_cluster3: KafkaCluster, replicated: tuple[KafkaLog, str]
) -> None:
    _, topic = replicated
    # Short timeouts: this test waits for them to run out.
    log = KafkaLog(kafka_cluster3.bootstrap, request_timeout_ms=2000, delivery_timeout_ms=3000)
    producer = log.producer(topic)
    await producer.start()
    try:
        await producer.append(records(0, 10))
        await asyncio.to_thread(kafka_cluster3.stop_node, 1)
        await asyncio.to_thread(kafka_cluster3.kill_node, 2)
        with pytest.raises(LogUnavailable):
            await producer.append(records(10, 10))
    finally:
        await producer.stop()
        await log.close()
