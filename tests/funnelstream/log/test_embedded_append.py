"""The embedded log's append binds keys and values as bytearrays (a cheaper path in the
sqlite3 module): they must still be BLOBs, read back as bytes and found by key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from funnelstream.log import LogRecord
from funnelstream.log.embedded import EmbeddedLog


async def test_records_are_blobs_read_back_as_bytes_and_found_by_key(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path, default_partitions=1)
    await log.ensure_topic("t", 1)
    producer = log.producer("t")
    await producer.start()
    await producer.append([LogRecord(b"a", b'{"n":1}', 1), LogRecord(b"b", b'{"n":2}', 2)])
    # A record as the previous release wrote it (bytes bound as they were).
    with sqlite3.connect(tmp_path / "log.sqlite3") as conn:
        conn.execute("INSERT INTO records VALUES ('t', 0, 2, ?, ?, 3)", (b"a", b'{"n":3}'))
        conn.execute("UPDATE heads SET next_offset = 3 WHERE topic = 't'")
        types = conn.execute("SELECT DISTINCT typeof(key), typeof(value) FROM records").fetchall()
    assert types == [("blob", "blob")]

    consumer = log.consumer("t", "g")
    await consumer.start()
    messages = await consumer.poll(10, 0.1)
    assert [(type(m.key), type(m.value)) for m in messages] == [(bytes, bytes)] * 3
    assert [(m.key, m.value) for m in messages] == [
        (b"a", b'{"n":1}'),
        (b"b", b'{"n":2}'),
        (b"a", b'{"n":3}'),
    ]
    # Erasure finds a key's records whichever release wrote them.
    assert await log.forget_key("t", b"a", None) == 2
    consumer.seek(0, 0)
    assert [m.key for m in await consumer.poll(10, 0.1)] == [b"b"]
    await consumer.stop()
    await log.close()
