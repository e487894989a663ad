"""The broker stops while `funnelstream ingest` takes traffic.

Ingest must answer 503 with `Retry-After` (at once when too many events already wait for
the log, after the delivery timeout for those waiting), keep its memory flat, answer 202
again once the broker is back, and every event it acknowledged must reach the final
counts. The client does what the README tells clients to do on 503: send the same events
again later (event ids make that safe).

This test owns its broker (it stops it), separate from the session's.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from funnelstream.clickhouse import ClickHouse
from funnelstream.log.kafka import KafkaLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from tests.e2e.server import WRITE, Server
from tests.fixtures.kafka import KafkaCluster, _broker_sh, _start_cluster
from tests.kafka.helpers import (
    FUNNEL,
    assert_tables_exact,
    committed_total,
    kafka_server,
    traffic,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

BATCH = 100
SENDERS = 16
MAX_PENDING = 1000  # events waiting for the log before ingest refuses at once
OUTAGE_S = 20.0


@pytest.fixture
def own_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KafkaCluster]:
    # Marked `kafka` above; started here rather than via `kafka_bootstrap` so stopping
    # it cannot disturb the tests sharing the session broker.
    directory = tmp_path / "kafka"
    cluster = _start_cluster(directory, nodes=1)
    try:
        yield cluster
    finally:
        _broker_sh("stop", "--dir", str(directory))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def test_broker_down_503_then_recovery_and_no_acked_event_lost(
    ch: ClickHouse, own_broker: KafkaCluster, tmp_path: Path
) -> None:
    t = traffic(visitors=4000, seed=51)
    events = t.demo.events
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    topic = unique("outage")
    ingest = kafka_server(
        "ingest",
        tmp_path / "ingest",
        own_broker.bootstrap,
        topic,
        FUNNELSTREAM_MAX_PENDING_EVENTS=str(MAX_PENDING),
    )
    await asyncio.to_thread(ingest.start)
    # A processor consumes all along: it rides the outage out too (polls that find
    # nothing, commits that fail and are retried) and carries on when the broker returns.
    log = KafkaLog(own_broker.bootstrap, client_id="outage-processor", request_timeout_ms=3000)
    group = unique("processors")
    config = ProcessorConfig(
        topic=topic, group=group, retry_max_seconds=2.0, log_timeout_seconds=3.0
    )
    processor = Processor(log, ch, FunnelCatalog([FUNNEL]), config)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await _run(ingest, own_broker, batches)

        # Everything was acknowledged in the end; the processor has every event exactly
        # once (refused requests may have been stored too: their event ids dedupe).
        async def done() -> bool:
            committed, end = await committed_total(log, topic, group)
            return end >= len(events) and committed == end

        await wait_until(done, 120, "the processor to commit every offset")
        assert not task.done()
    finally:
        stop.set()
        await task
        await log.close()
        await asyncio.to_thread(ingest.stop)
    assert_tables_exact(ch, t)


async def _run(
    ingest: Server, broker: KafkaCluster, batches: list[list[dict[str, object]]]
) -> None:
    assert ingest.proc is not None
    pid = ingest.proc.pid
    todo = collections.deque(range(len(batches)))
    acked: set[int] = set()
    refusals: collections.Counter[str] = collections.Counter()
    outage = {"on": False}
    during: list[int] = []  # statuses answered while the broker was down

    async def sender(client: httpx.AsyncClient) -> None:
        while todo:
            i = todo.popleft()
            try:
                r = await client.post("/v1/events", json={"batch": batches[i]}, headers=WRITE)
            except httpx.HTTPError:
                todo.append(i)
                await asyncio.sleep(0.5)
                continue
            if outage["on"]:
                during.append(r.status_code)
            if r.status_code == 202:
                acked.add(i)
                await asyncio.sleep(1.0)  # a steady trickle that spans the outage
                continue
            assert r.status_code == 503, r.text
            assert int(r.headers["Retry-After"]) >= 1
            refusals[r.json()["error"]] += 1
            todo.append(i)  # the same events again, later
            await asyncio.sleep(0.5)  # Retry-After, shortened to keep the test quick

    async with httpx.AsyncClient(base_url=ingest.base, timeout=60) as client:
        senders = [asyncio.create_task(sender(client)) for _ in range(SENDERS)]
        await wait_until(lambda: _true(len(acked) >= 20), 60, "traffic flowing")

        await asyncio.to_thread(broker.stop_node, 0)
        outage["on"] = True
        rss = [rss_mib(pid)]
        readiness: list[tuple[int, str]] = []  # /readyz while appends are refused
        stop_at = time.monotonic()
        while time.monotonic() - stop_at < OUTAGE_S:
            await asyncio.sleep(0.5)
            rss.append(rss_mib(pid))
            if refusals["log_unavailable"]:
                r = await client.get("/readyz")
                readiness.append((r.status_code, str(r.json().get("failed", {}).get("log"))))
        outage["on"] = False
        await asyncio.to_thread(broker.start_node, 0)

        await asyncio.wait_for(asyncio.gather(*senders), 180)
        # The ingest process shows the refused appends as its failed "log", and ready
        # again once an append has gone through.
        assert any(code == 503 and "appends failing" in why for code, why in readiness)
        assert (await client.get("/readyz")).status_code == 200

    # Refused at once while the buffer was full, and after the delivery timeout for
    # the requests that had to wait; a few may have made it before the stop took effect.
    assert refusals["overloaded"] > 0, refusals
    assert refusals["log_unavailable"] > 0, refusals
    assert during.count(503) > 0.9 * len(during), during
    assert during.count(202) <= SENDERS, during
    # Memory flat while refusing: bounded by MAX_PENDING events, not by the outage.
    assert max(rss) - rss[0] < 32, rss
    assert acked == set(range(len(batches)))
    print(f"503s by reason: {dict(refusals)}; ingest RSS MiB during the outage: {rss}")


async def _true(value: bool) -> bool:
    return value
