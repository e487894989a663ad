"""The embedded log: durable partitions in one SQLite file, for a single machine.

Why SQLite in WAL mode rather than our own segment files: an append batch is one
transaction, so after `kill -9` or power loss a batch is either wholly in the log or not
at all; `synchronous=FULL` fsyncs the WAL on every commit, so `append` returning means the
records are on disk; readers never block the writer; and we write no file format of our
own to get wrong. Throughput comes from group commit: concurrent `append` calls that
arrive while a transaction is being written are coalesced into the next one, so one fsync
covers many HTTP requests.

Group membership is simple on purpose: a consumer group has at most one member, in one
process, which holds every partition. Several processor processes sharing work is what the
Kafka backend is for.

Producers may sit in other processes (`funnelstream serve` appends from its ingest
process): SQLite's file locks order the writers of every process, and an append reads
each partition's head inside its own `BEGIN IMMEDIATE` transaction, so offsets never
collide. The in-process signal does not cross processes; a consumer waiting for records
looks again every `_IDLE_RECHECK_S` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from funnelstream.faults import FaultPlan
from funnelstream.log.base import (
    Log,
    LogConsumer,
    LogMessage,
    LogProducer,
    LogRecord,
    LogUnavailable,
    RebalanceListener,
)
from funnelstream.log.partitioner import partition_for

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS heads (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB NOT NULL, value BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commits (
    topic TEXT NOT NULL, grp TEXT NOT NULL, partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, partition)
) WITHOUT ROWID;
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class _Store:
    """The SQLite file; every method is blocking and meant for a worker thread."""

    def __init__(self, path: Path, faults: FaultPlan | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Test only (funnelstream/faults.py): "log.append" fails a write as a full disk does.
        self._faults = faults
        self._write = _connect(path)
        self._read = _connect(path)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._write.executescript(_SCHEMA)

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._write.close()
            self._read.close()

    def ensure_topic(self, topic: str, partitions: int) -> int:
        with self._write_lock:
            self._write.execute("BEGIN IMMEDIATE")
            try:
                row = self._write.execute(
                    "SELECT partitions FROM topics WHERE name = ?", (topic,)
                ).fetchone()
                if row is not None:
                    self._write.execute("COMMIT")
                    return int(row[0])
                self._write.execute("INSERT INTO topics VALUES (?, ?)", (topic, partitions))
                self._write.executemany(
                    "INSERT INTO heads VALUES (?, ?, 0)", [(topic, p) for p in range(partitions)]
                )
                self._write.execute("COMMIT")
            except BaseException:
                self._write.execute("ROLLBACK")
                raise
            return partitions

    def partitions(self, topic: str) -> int | None:
        with self._read_lock:
            row = self._read.execute(
                "SELECT partitions FROM topics WHERE name = ?", (topic,)
            ).fetchone()
        return None if row is None else int(row[0])

    def append(self, topic: str, partitions: int, records: Sequence[LogRecord]) -> None:
        by_partition: dict[int, list[LogRecord]] = {}
        for record in records:
            by_partition.setdefault(partition_for(record.key, partitions), []).append(record)
        if self._faults is not None and (fault := self._faults.take(("log.append",))):
            raise fault.error(topic)
        with self._write_lock:
            self._write.execute("BEGIN IMMEDIATE")
            try:
                for partition, batch in by_partition.items():
                    (head,) = self._write.execute(
                        "SELECT next_offset FROM heads WHERE topic = ? AND partition = ?",
                        (topic, partition),
                    ).fetchone()
                    # bytearray: the sqlite3 module binds it directly, while for bytes it
                    # first searches for an adapter on every value (~20% of a row's cost).
                    # Stored and read back the same: a BLOB, as bytes.
                    self._write.executemany(
                        "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (
                                topic,
                                partition,
                                head + i,
                                bytearray(r.key),
                                bytearray(r.value),
                                r.timestamp_ms,
                            )
                            for i, r in enumerate(batch)
                        ],
                    )
                    self._write.execute(
                        "UPDATE heads SET next_offset = ? WHERE topic = ? AND partition = ?",
                        (head + len(batch), topic, partition),
                    )
                self._write.execute("COMMIT")
            except BaseException:
                self._write.execute("ROLLBACK")
                raise

    def read(self, topic: str, positions: Mapping[int, int], max_records: int) -> list[LogMessage]:
        out: list[LogMessage] = []
        with self._read_lock:
            for partition, offset in positions.items():
                if len(out) >= max_records:
                    break
                rows = self._read.execute(
                    "SELECT offset, key, value, ts FROM records "
                    "WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                    (topic, partition, offset, max_records - len(out)),
                ).fetchall()
                out.extend(LogMessage(partition, o, k, v, ts) for o, k, v, ts in rows)
        return out

    def first_offsets(self, topic: str) -> dict[int, int]:
        with self._read_lock:
            rows = self._read.execute(
                "SELECT partition, MIN(offset) FROM records WHERE topic = ? GROUP BY partition",
                (topic,),
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def heads(self, topic: str) -> dict[int, int]:
        with self._read_lock:
            rows = self._read.execute(
                "SELECT partition, next_offset FROM heads WHERE topic = ?", (topic,)
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def commit(self, topic: str, group: str, offsets: Mapping[int, int]) -> None:
        with self._write_lock:
            self._write.execute("BEGIN IMMEDIATE")
            try:
                self._write.executemany(
                    "INSERT INTO commits VALUES (?, ?, ?, ?) ON CONFLICT (topic, grp, partition)"
                    " DO UPDATE SET offset = excluded.offset",
                    [(topic, group, p, o) for p, o in offsets.items()],
                )
                self._write.execute("COMMIT")
            except BaseException:
                self._write.execute("ROLLBACK")
                raise

    def committed(self, topic: str, group: str, partition: int) -> int | None:
        with self._read_lock:
            row = self._read.execute(
                "SELECT offset FROM commits WHERE topic = ? AND grp = ? AND partition = ?",
                (topic, group, partition),
            ).fetchone()
        return None if row is None else int(row[0])

    def delete_key(self, topic: str, key: bytes, before: tuple[int, int] | None) -> int:
        partition, offset = before if before is not None else (-1, -1)
        with self._write_lock:
            cur = self._write.execute(
                "DELETE FROM records WHERE topic = ? AND key = ? "
                "AND (? < 0 OR (partition = ? AND offset < ?))",
                (topic, key, partition, partition, offset),
            )
            return cur.rowcount

    def delete_older_than(self, cutoff_ms: int) -> int:
        """Delete records older than the cutoff that every consumer group has committed
        past. Unlike Kafka, a record no group has read yet is kept whatever its age: on
        one machine a stopped processor must not lose accepted events."""
        with self._write_lock:
            cur = self._write.execute(
                "DELETE FROM records WHERE ts < ? AND offset < COALESCE(("
                "  SELECT MIN(c.offset) FROM commits c"
                "  WHERE c.topic = records.topic AND c.partition = records.partition"
                "), 0)",
                (cutoff_ms,),
            )
            return cur.rowcount


class _Appender:
    """Group commit: appends that arrive while one transaction is written share the next."""

    def __init__(self, store: _Store, topic: str, partitions: int) -> None:
        self._store = store
        self._topic = topic
        self._partitions = partitions
        self._pending: list[tuple[Sequence[LogRecord], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, records: Sequence[LogRecord]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((records, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            merged = [r for records, _ in batch for r in records]
            try:
                await asyncio.to_thread(self._store.append, self._topic, self._partitions, merged)
            except (sqlite3.Error, OSError) as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(LogUnavailable(f"embedded log write failed: {exc}"))
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


class EmbeddedLog(Log):
    def __init__(
        self,
        directory: Path,
        default_partitions: int = 8,
        retention_ms: int | None = 7 * 24 * 3600 * 1000,
        faults: FaultPlan | None = None,
    ) -> None:
        self._store = _Store(Path(directory) / "log.sqlite3", faults)
        self._default_partitions = default_partitions
        self.retention_ms = retention_ms
        self._appenders: dict[str, _Appender] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._members: dict[tuple[str, str], EmbeddedConsumer] = {}

    async def ensure_topic(self, topic: str, partitions: int) -> None:
        await asyncio.to_thread(self._store.ensure_topic, topic, partitions)

    async def _partitions(self, topic: str) -> int:
        known = await asyncio.to_thread(self._store.partitions, topic)
        if known is not None:
            return known
        return await asyncio.to_thread(self._store.ensure_topic, topic, self._default_partitions)

    async def _append(self, topic: str, records: Sequence[LogRecord]) -> None:
        appender = self._appenders.get(topic)
        if appender is None:
            appender = _Appender(self._store, topic, await self._partitions(topic))
            self._appenders.setdefault(topic, appender)
            appender = self._appenders[topic]
        await appender.append(records)
        self.signal(topic).set()

    def signal(self, topic: str) -> asyncio.Event:
        return self._signals.setdefault(topic, asyncio.Event())

    def producer(self, topic: str) -> LogProducer:
        return EmbeddedProducer(self, topic)

    def consumer(
        self, topic: str, group: str, listener: RebalanceListener | None = None
    ) -> LogConsumer:
        return EmbeddedConsumer(self, topic, group, listener)

    async def enforce_retention(self, now_ms: int | None = None) -> int:
        """Drop records older than the retention period; returns how many went."""
        if self.retention_ms is None:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return await asyncio.to_thread(self._store.delete_older_than, now - self.retention_ms)

    async def forget_key(self, topic: str, key: bytes, before: tuple[int, int] | None) -> int:
        # Offsets are never reused: a consumer reads past the gap.
        return await asyncio.to_thread(self._store.delete_key, topic, key, before)

    async def close(self) -> None:
        for appender in self._appenders.values():
            if appender._writer is not None:
                await asyncio.gather(appender._writer, return_exceptions=True)
        await asyncio.to_thread(self._store.close)

    # used by consumers
    @property
    def store(self) -> _Store:
        return self._store

    def join(self, member: EmbeddedConsumer) -> None:
        key = (member.topic, member.group)
        if key in self._members:
            raise RuntimeError(
                f"the embedded log allows one member per consumer group ({member.group!r}); "
                "run several processors against Kafka"
            )
        self._members[key] = member

    def leave(self, member: EmbeddedConsumer) -> None:
        self._members.pop((member.topic, member.group), None)


class EmbeddedProducer(LogProducer):
    def __init__(self, log: EmbeddedLog, topic: str) -> None:
        self._log = log
        self._topic = topic

    async def start(self) -> None:
        await self._log._partitions(self._topic)

    async def stop(self) -> None:
        return None

    async def append(self, records: Sequence[LogRecord]) -> None:
        if records:
            await self._log._append(self._topic, records)


class EmbeddedConsumer(LogConsumer):
    # How often to look for records appended by another process when no in-process
    # signal arrives.
    _IDLE_RECHECK_S = 0.05

    def __init__(
        self, log: EmbeddedLog, topic: str, group: str, listener: RebalanceListener | None
    ) -> None:
        self._log = log
        self.topic = topic
        self.group = group
        self._listener = listener
        self._positions: dict[int, int] = {}
        self._assigned: frozenset[int] = frozenset()
        self._started = False

    async def start(self) -> None:
        self._log.join(self)
        partitions = await self._log._partitions(self.topic)
        self._assigned = frozenset(range(partitions))
        first = await asyncio.to_thread(self._log.store.first_offsets, self.topic)
        for p in self._assigned:
            committed = await self.committed(p)
            self._positions[p] = committed if committed is not None else first.get(p, 0)
        self._started = True
        if self._listener is not None:
            await self._listener.on_assigned(self._assigned)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            if self._listener is not None:
                await self._listener.on_revoked(self._assigned)
        finally:
            self._assigned = frozenset()
            self._log.leave(self)

    async def poll(self, max_records: int, timeout_s: float) -> list[LogMessage]:
        deadline = time.monotonic() + timeout_s
        signal = self._log.signal(self.topic)
        while True:
            signal.clear()
            # Rotate the starting partition so a busy partition cannot starve the others.
            order = sorted(self._positions.items())
            if order:
                shift = int(time.monotonic() * 1000) % len(order)
                order = order[shift:] + order[:shift]
            messages = await asyncio.to_thread(
                self._log.store.read, self.topic, dict(order), max_records
            )
            if messages:
                for m in messages:
                    self._positions[m.partition] = m.offset + 1
                return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), timeout=min(remaining, self._IDLE_RECHECK_S))

    async def commit(self, offsets: Mapping[int, int]) -> None:
        if offsets:
            await asyncio.to_thread(self._log.store.commit, self.topic, self.group, offsets)

    async def committed(self, partition: int) -> int | None:
        return await asyncio.to_thread(self._log.store.committed, self.topic, self.group, partition)

    def seek(self, partition: int, offset: int) -> None:
        if partition not in self._assigned:
            raise ValueError(f"partition {partition} is not assigned to this consumer")
        self._positions[partition] = offset

    def assignment(self) -> frozenset[int]:
        return self._assigned

    async def end_offsets(self) -> dict[int, int]:
        heads = await asyncio.to_thread(self._log.store.heads, self.topic)
        return {p: o for p, o in heads.items() if p in self._assigned}
