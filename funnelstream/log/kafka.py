"""The Kafka log, on aiokafka: what production runs.

Durability comes from the producer: idempotent, `acks="all"`, so `append` returns only
once every in-sync replica has each record, and a retried send never duplicates within
a partition. Partitions are picked by aiokafka's default partitioner (murmur2 of the key,
like the Java client), so other Kafka clients agree on where a visitor's events live.

Consumers use a consumer group with auto-commit off: the processor commits explicit
offsets after its sink write. aiokafka's group protocol is eager, so each rebalance
revokes every partition and assigns afresh; `_Membership` turns its callbacks into the
`RebalanceListener` promises (revoke before giving up, assign before the first message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.structs import TopicPartition

from funnelstream.log.base import (
    Log,
    LogConsumer,
    LogMessage,
    LogProducer,
    LogRecord,
    LogUnavailable,
    RebalanceListener,
)

logger = logging.getLogger(__name__)
# aiokafka's generation id while it is not a member of its group (OffsetCommitRequest's
# DEFAULT_GENERATION_ID).
_NO_GENERATION = -1

# What a broker or network failure looks like from aiokafka: its own errors, asyncio
# timeouts and socket errors that escape it.
_UNAVAILABLE = (KafkaError, TimeoutError, OSError)


class KafkaLog(Log):
    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str = "funnelstream",
        *,
        linger_ms: int = 5,
        compression: str = "lz4",
        request_timeout_ms: int = 10000,
        delivery_timeout_ms: int = 15000,
        replication_factor: int | None = None,
        min_insync_replicas: int | None = None,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 1000,
        max_poll_interval_ms: int = 300000,
        retention_ms: int | None = None,
    ) -> None:
        """`replication_factor` None means min(3, brokers in the cluster), and
        `min_insync_replicas` None means min(2, replication_factor): with three replicas a
        write survives one broker down without ever being acknowledged by one alone.
        """
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.compression = compression
        self.request_timeout_ms = request_timeout_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        # `retention.ms` of the topics this creates (None: the broker's default); an
        # existing topic keeps its own (funnelstream/retention.py).
        self.retention_ms = retention_ms
        self._admin: AIOKafkaAdminClient | None = None
        self._admin_lock = asyncio.Lock()

    async def _admin_client(self) -> AIOKafkaAdminClient:
        async with self._admin_lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id=f"{self.client_id}-admin",
                    request_timeout_ms=self.request_timeout_ms,
                )
                await admin.start()
                self._admin = admin
            return self._admin

    async def ensure_topic(self, topic: str, partitions: int) -> None:
        """Create the topic if it is missing and wait until every partition has a leader.

        An existing topic is left as it is, even with another partition count: changing
        it would move keys between partitions and split visitors' state.
        """
        try:
            admin = await self._admin_client()
            rf = self.replication_factor
            if rf is None:
                brokers = (await admin.describe_cluster())["brokers"]
                rf = min(3, len(brokers))
            min_isr = self.min_insync_replicas or min(2, rf)
            configs = {"min.insync.replicas": str(min_isr)}
            if self.retention_ms is not None:
                configs["retention.ms"] = str(self.retention_ms)
            response = await admin.create_topics(
                [NewTopic(topic, partitions, rf, topic_configs=configs)]
            )
            for error in response.to_object()["topic_errors"]:
                err = for_code(error["error_code"])
                if error["error_code"] != 0 and err is not TopicAlreadyExistsError:
                    raise err(error["error_message"])
            await self._wait_for_leaders(admin, topic)
        except _UNAVAILABLE as exc:
            raise LogUnavailable(f"could not ensure topic {topic!r}: {exc!r}") from exc

    async def _wait_for_leaders(self, admin: AIOKafkaAdminClient, topic: str) -> None:
        # Creation returns before the partitions' leaders are elected everywhere; a
        # producer started right away would otherwise spend its first send on retries.
        async with asyncio.timeout(self.request_timeout_ms / 1000):
            while True:
                (described,) = await admin.describe_topics([topic])
                parts = described["partitions"]
                if described["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                    return
                await asyncio.sleep(0.05)

    def producer(self, topic: str) -> LogProducer:
        return KafkaProducer(self, topic)

    def consumer(
        self, topic: str, group: str, listener: RebalanceListener | None = None
    ) -> LogConsumer:
        return KafkaConsumer(self, topic, group, listener)

    async def close(self) -> None:
        async with self._admin_lock:
            if self._admin is not None:
                await self._admin.close()
                self._admin = None


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A send abandoned after the first failure or the delivery timeout may still fail
    # later; fetch its exception so asyncio does not log it as never retrieved.
    if not future.cancelled():
        future.exception()


class KafkaProducer(LogProducer):
    """Appends through one aiokafka producer, replaced after a failed append.

    After a delivery timeout or a broker error the aiokafka producer may be left retrying
    old batches with a stale idempotence sequence (seen after a single-broker restart:
    later sends then never complete). Those records were already refused to the client,
    so the producer is abandoned and the next append starts a fresh one.
    """

    def __init__(self, log: KafkaLog, topic: str) -> None:
        self._log = log
        self._topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._abandoned: set[asyncio.Task[None]] = set()

    async def _new_producer(self) -> AIOKafkaProducer:
        cfg = self._log
        producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers,
            client_id=cfg.client_id,
            acks="all",
            enable_idempotence=True,
            compression_type=cfg.compression,
            linger_ms=cfg.linger_ms,
            request_timeout_ms=cfg.request_timeout_ms,
        )
        try:
            await producer.start()
        except _UNAVAILABLE as exc:
            await producer.stop()
            raise LogUnavailable(f"kafka producer could not start: {exc!r}") from exc
        return producer

    async def start(self) -> None:
        self._producer = await self._new_producer()

    async def _current(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                self._producer = await self._new_producer()
            return self._producer

    async def _stop_producer(self, producer: AIOKafkaProducer) -> None:
        stopping = asyncio.ensure_future(producer.stop())
        await asyncio.wait([stopping], timeout=self._log.delivery_timeout_ms / 1000)
        if not stopping.done():
            # aiokafka's stop() flushes with no time limit, and an idempotent producer
            # retries a batch for as long as its error is retriable (too few in-sync
            # replicas, say). Those records were already reported as not accepted, so
            # end the sender task (aiokafka has no public way) and let stop() finish.
            sender_task = getattr(getattr(producer, "_sender", None), "sender_task", None)
            logger.warning("kafka producer for %r did not flush in time; abandoning", self._topic)
            if sender_task is not None:
                sender_task.cancel()
        with contextlib.suppress(Exception):
            await stopping

    def _abandon(self, producer: AIOKafkaProducer) -> None:
        if self._producer is producer:
            self._producer = None
            task = asyncio.create_task(self._stop_producer(producer))
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._stop_producer(producer)
        if self._abandoned:
            await asyncio.gather(*self._abandoned, return_exceptions=True)

    async def append(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        producer = await self._current()
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._log.delivery_timeout_ms / 1000):
                for r in records:
                    # `send` only enqueues (waiting for buffer space or metadata); the
                    # future resolves when the batch is acknowledged by all in-sync replicas.
                    fut = await producer.send(
                        self._topic, value=r.value, key=r.key, timestamp_ms=r.timestamp_ms
                    )
                    fut.add_done_callback(_retrieve)
                    futures.append(fut)
                await asyncio.gather(*futures)
        except _UNAVAILABLE as exc:
            self._abandon(producer)
            raise LogUnavailable(f"kafka append to {self._topic!r} failed: {exc!r}") from exc


class _Membership(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Adapts aiokafka's rebalance callbacks to our `RebalanceListener`.

    `held` is what this member owns from the start of `on_assigned` to the start of
    `on_revoked` (aiokafka's own assignment lags: it still lists partitions during the
    revoke callback that another member may already own). `ready` is the part of it whose
    `on_assigned` has finished; `poll` returns messages only from those, so no message
    reaches the caller before its partition's state is restored or after it was flushed.
    `epoch` counts revocations: records fetched by a `getmany` during which one started
    are dropped, since the caller may already have flushed and committed that partition.
    A new assignment starts from the committed offsets, so those records come again to
    whichever member owns them next; but when the same partition was assigned again
    before that `getmany` returned, its records may come from the new assignment, whose
    position then already moved past them: `KafkaConsumer._rewind` seeks such partitions
    back to their committed offsets (a replay the processor skips per visitor).
    aiokafka logs and swallows callback errors; we keep the first one and `poll` raises it,
    so a processor that could not flush or restore stops instead of going on wrongly.
    """

    def __init__(self, listener: RebalanceListener | None) -> None:
        self._listener = listener
        self.held: frozenset[int] = frozenset()
        self.ready: frozenset[int] = frozenset()
        self.epoch = 0
        self.changed = asyncio.Event()
        self.error: BaseException | None = None
        self._lock = asyncio.Lock()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.revoke()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = frozenset(tp.partition for tp in assigned)
        async with self._lock:
            self.held = partitions
            try:
                if self._listener is not None and partitions:
                    await self._listener.on_assigned(partitions)
            except Exception as exc:
                self.error = self.error or exc
                raise
            self.ready = partitions
            self.changed.set()

    async def revoke(self) -> None:
        async with self._lock:
            held, self.ready, self.held = self.ready, frozenset(), frozenset()
            self.epoch += 1
            self.changed.set()
            if self._listener is not None and held:
                try:
                    await self._listener.on_revoked(held)
                except Exception as exc:
                    self.error = self.error or exc
                    raise


class KafkaConsumer(LogConsumer):
    def __init__(
        self, log: KafkaLog, topic: str, group: str, listener: RebalanceListener | None
    ) -> None:
        self._log = log
        self._topic = topic
        self._group = group
        self._membership = _Membership(listener)
        self._consumer: AIOKafkaConsumer | None = None

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self._topic, partition)

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("consumer not started")
        return self._consumer

    async def start(self) -> None:
        cfg = self._log
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers,
            client_id=cfg.client_id,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Our producers are not transactional today, so this changes nothing now; it
            # keeps aborted records out if a transactional writer is ever added.
            isolation_level="read_committed",
            request_timeout_ms=cfg.request_timeout_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
        )
        consumer.subscribe([self._topic], listener=self._membership)
        # Set before starting: the group may assign partitions during `start()`, and the
        # caller's on_assigned may already call `seek` on this consumer.
        self._consumer = consumer
        try:
            await consumer.start()
        except _UNAVAILABLE as exc:
            self._consumer = None
            await consumer.stop()
            raise LogUnavailable(f"kafka consumer could not start: {exc!r}") from exc

    async def stop(self) -> None:
        if self._consumer is None:
            return
        consumer = self._consumer
        try:
            # aiokafka leaves the group without calling the listener; revoke first, while
            # this member still owns the partitions and can commit for them.
            await self._membership.revoke()
        finally:
            self._consumer = None
            await consumer.stop()

    async def poll(self, max_records: int, timeout_s: float) -> list[LogMessage]:
        consumer = self._started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._membership.error is not None:
                raise self._membership.error
            ready = self._membership.ready
            remaining = deadline - loop.time()
            if not ready:
                # Nothing assigned yet (or a rebalance is running): wait for a change
                # rather than calling getmany() with no partitions, which means "all".
                if remaining <= 0:
                    return []
                self._membership.changed.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._membership.changed.wait()
                except TimeoutError:
                    return []
                continue
            epoch = self._membership.epoch
            try:
                batches = await consumer.getmany(
                    *(self._tp(p) for p in sorted(ready)),
                    timeout_ms=max(0, int(remaining * 1000)),
                    max_records=max_records,
                )
            except _UNAVAILABLE as exc:
                raise LogUnavailable(f"kafka poll of {self._topic!r} failed: {exc!r}") from exc
            if self._membership.epoch != epoch:
                await self._rewind(batches)
                continue
            return [
                LogMessage(
                    partition=tp.partition,
                    offset=m.offset,
                    key=m.key if m.key is not None else b"",
                    value=m.value if m.value is not None else b"",
                    timestamp_ms=m.timestamp,
                )
                for tp, messages in batches.items()
                for m in messages
            ]

    async def _rewind(self, dropped: Mapping[TopicPartition, list[Any]]) -> None:
        """After dropping what a fetch returned while a revocation started: the records of
        a partition assigned again during that fetch may be among them, and the fetch
        moved its position past them. Nothing of the new assignment has reached the
        caller yet, so start those partitions again from their committed offsets."""
        consumer = self._started()
        again = [tp for tp, records in dropped.items() if records and tp in consumer.assignment()]
        if not again:
            return
        try:
            for tp in again:
                # Not `seek_to_committed`: it leaves a partition without a commit where it is.
                offset = await consumer.committed(tp)
                if offset is not None and offset >= 0:
                    consumer.seek(tp, offset)
                else:
                    await consumer.seek_to_beginning(tp)  # auto_offset_reset="earliest"
        except IllegalStateError:
            pass  # revoked again meanwhile: the next assignment starts from the commit
        except _UNAVAILABLE as exc:
            raise LogUnavailable(f"kafka seek to committed failed: {exc!r}") from exc

    async def commit(self, offsets: Mapping[int, int]) -> None:
        if not offsets:
            return
        try:
            await self._started().commit({self._tp(p): o for p, o in offsets.items()})
        except _UNAVAILABLE as exc:
            # Includes CommitFailedError: the group rebalanced and these partitions may
            # belong to another member now; their new owner resumes from the last commit.
            raise LogUnavailable(f"kafka commit for {self._group!r} failed: {exc!r}") from exc

    async def committed(self, partition: int) -> int | None:
        try:
            offset = await self._started().committed(self._tp(partition))
        except _UNAVAILABLE as exc:
            raise LogUnavailable(f"kafka committed() failed: {exc!r}") from exc
        return None if offset is None or offset < 0 else int(offset)

    def seek(self, partition: int, offset: int) -> None:
        try:
            self._started().seek(self._tp(partition), offset)
        except IllegalStateError as exc:
            raise ValueError(f"partition {partition} is not assigned to this consumer") from exc

    def assignment(self) -> frozenset[int]:
        return self._membership.held

    async def fenced(self, written: Mapping[int, int]) -> bool:
        """Asks the coordinator: commits `written` (all of it is written, so committing it
        is always right), which it refuses once the group has moved on. A member that
        stalled learns so before it writes, not from the heartbeat that answers later."""
        consumer = self._consumer
        if consumer is None:
            return False
        coordinator = consumer._coordinator
        # aiokafka forgets its generation when told the member is unknown (a heartbeat,
        # join or commit refused with UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION).
        if getattr(coordinator, "generation", None) == _NO_GENERATION:
            return True
        held = {p: o for p, o in written.items() if p in self._membership.held}
        if not held:
            return False
        try:
            async with asyncio.timeout(self._log.request_timeout_ms / 1000):
                await consumer.commit({self._tp(p): o for p, o in held.items()})
        except CommitFailedError:
            # Raised for UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION and REBALANCE_IN_PROGRESS,
            # each of which makes aiokafka rejoin: a revocation follows, and a new
            # assignment starts from the committed offsets.
            return True
        except _UNAVAILABLE:
            return False  # the broker did not answer: unknown; the write goes on
        return False

    async def end_offsets(self) -> dict[int, int]:
        consumer = self._started()
        tps = [self._tp(p) for p in sorted(self._membership.held)]
        if not tps:
            return {}
        try:
            ends = await consumer.end_offsets(tps)
        except _UNAVAILABLE as exc:
            raise LogUnavailable(f"kafka end_offsets() failed: {exc!r}") from exc
        return {tp.partition: int(o) for tp, o in ends.items()}
