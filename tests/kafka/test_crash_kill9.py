"""`kill -9` the processor at random points of a 100k-event run, several times; after the
last restart every number equals the offline oracle (the traffic generator's own count
of visitors per step).

The events are produced to Kafka up front. The process killed and restarted on the same
data directory is `funnelstream serve --log-backend kafka` (processor + query API + the
embedded ClickHouse engine), so each kill also interrupts ClickHouse writes and the
offset commits at arbitrary points.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from funnelstream.log.kafka import KafkaLog
from tests.e2e.server import Server, stats
from tests.kafka.helpers import (
    EVERYTHING,
    PARTITIONS,
    health,
    kafka_server,
    produce,
    traffic,
    unique,
    wait_caught_up,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

KILLS = 4


def wait_working(server: Server, timeout: float = 60) -> int:
    """Until the restarted processor holds partitions again; its processed count then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(server)
        if h.get("partitions"):
            return int(h["processed"])
        time.sleep(0.1)
    raise AssertionError(f"processor never got partitions: {h}")


def wait_processed(server: Server, target: int, timeout: float = 120) -> dict[str, Any]:
    """Health, polled until this life of the processor has applied `target` messages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(server)
        if int(h["processed"]) >= target:
            return h
        time.sleep(0.02)
    raise AssertionError(f"processor stalled below {target} messages: {h}")


@pytest.mark.parametrize("seed", [41])
def test_kill9_processor_repeatedly_then_exact(
    tmp_path: Path, kafka_bootstrap: str, seed: int
) -> None:
    rng = random.Random(seed)
    t = traffic(visitors=42_000, seed=seed)
    assert len(t.events) >= 100_000
    topic, group = unique("crash"), unique("processors")

    async def produce_all() -> None:
        log = KafkaLog(kafka_bootstrap, client_id="crash-test")
        await log.ensure_topic(topic, PARTITIONS)
        await produce(log, topic, t.events)
        await log.close()

    asyncio.run(produce_all())

    data = tmp_path / "serve"
    progress: list[tuple[float, int, int]] = []
    for _ in range(KILLS):
        # Small batches: the processed count moves in steps of a batch, and a life must
        # still have work left when its count reaches the kill target.
        server = kafka_server(
            "serve", data, kafka_bootstrap, topic, group, FUNNELSTREAM_BATCH_MAX_MESSAGES="2000"
        ).start()
        try:
            wait_working(server)
            # Kill after a random share of what is left, not after a random time: a fast
            # life must not finish the stream before it is killed.
            left = health(server).get("lag") or len(t.events)
            target = int(rng.uniform(0.1, 0.7) * left)
            h = wait_processed(server, target)
        finally:
            server.kill9()
        progress.append((target, int(h["processed"]), h["lag"]))

    server = kafka_server("serve", data, kafka_bootstrap, topic, group).start()
    try:
        wait_caught_up(server, len(t.events), timeout=300)
        report = server.report(**EVERYTHING)
        assert [s["visitors"] for s in report["steps"]] == t.reached
        assert [s["reached"] for s in server.live()["stages"]] == t.reached
        totals = stats(server)
        assert totals["events"] == len(t.events)
        assert totals["visitors"] == t.reached[0]
        assert totals["funnel_transitions"] == sum(t.reached)
        assert totals["dead_letters"] == 0
    finally:
        server.stop()
    print(f"kills (target, processed in that life, processed in that life, lag): {progress}")
    # Killed mid-stream each time: every life had work left when it died.
    assert len(progress) == KILLS
    assert all(lag > 0 for _, _, lag in progress)
