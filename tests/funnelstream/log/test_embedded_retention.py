"""Embedded log retention never drops what a consumer group has not committed past."""

from __future__ import annotations

from pathlib import Path

from funnelstream.log import LogRecord
from funnelstream.log.embedded import EmbeddedLog


async def test_retention_keeps_uncommitted_records(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path, default_partitions=1, retention_ms=1000)
    producer = log.producer("t")
    await producer.start()
    await producer.append([LogRecord(b"k", str(i).encode(), 100 + i) for i in range(10)])
    # Old, but no group has read anything: nothing goes.
    assert await log.enforce_retention(now_ms=10_000) == 0
    consumer = log.consumer("t", "g")
    await consumer.start()
    await consumer.commit({0: 6})
    # Old and committed past by every group: offsets 0..5 go, 6..9 stay.
    assert await log.enforce_retention(now_ms=10_000) == 6
    consumer.seek(0, 0)
    remaining = await consumer.poll(100, 0.1)
    assert [m.offset for m in remaining] == [6, 7, 8, 9]
    # Recent records stay even when committed.
    await consumer.commit({0: 10})
    assert await log.enforce_retention(now_ms=1_050) == 0
    await consumer.stop()
    await log.close()
