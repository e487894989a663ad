"""A stop while the processor waits in a poll: it is seen within `STOP_LATENCY_SECONDS`
whatever the batch period, and the batch held is written and committed before `run`
returns (the embedded log and the real ClickHouse engine)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from funnelstream.clickhouse import ClickHouse
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import STOP_LATENCY_SECONDS, Processor, ProcessorConfig
from schemas.events import Event, encode
from tests.processor.test_pipeline import append

pytestmark = pytest.mark.clickhouse

T0 = 1_760_000_000_000


async def test_a_stop_during_a_long_batch_period_writes_the_batch_at_once(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    event = Event(
        project_id="p",
        event_id="00000000-0000-4000-8000-000000000001",
        event="view",
        visitor_id="v",
        timestamp_ms=T0,
        received_at_ms=T0,
    )
    await append(log, [(event.partition_key(), encode(event))])
    # No batch is due for a minute: only the stop writes this one.
    config = ProcessorConfig(batch_max_seconds=60, batch_idle_seconds=60)
    processor = Processor(log, ch, FunnelCatalog([]), config)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    while processor.applied_messages < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # into the next poll, which waits for more
    assert processor.processed_messages == 0
    stopping = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - stopping < STOP_LATENCY_SECONDS + 1
    assert processor.processed_messages == 1
    rows = ch.query_rows_sync("SELECT count() FROM events WHERE project_id = 'p'")
    assert rows == [(1,)]
    consumer = log.consumer("events", "funnelstream-processor")
    committed = [await consumer.committed(p) for p in (0, 1)]
    assert sorted(c or 0 for c in committed) == [0, 1]
    await log.close()
