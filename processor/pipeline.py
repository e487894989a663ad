"""The processor stage, in the order data moves:

    poll      read messages from the log (per partition in offset order)
    decode    bytes → Event; undecodable or unknown schema → dead letter with a reason
    apply     dedupe → sessionize → advance every funnel (processor/transform.py, pure)
    batch     collect rows until `batch_max_messages` or `batch_max_seconds`, whichever first
    write     events, sessions, funnel state, transitions, dead letters, then visitor state
    commit    the next offset per partition, only after the write succeeded

A ClickHouse failure is infrastructure, not a bad message: the same batch is retried with
backoff, consumption waits, and no offset moves past an unwritten batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.log import Log, LogConsumer, LogMessage, RebalanceListener
from processor.catalog import FunnelCatalog
from processor.rows import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    FUNNEL_STATE_COLUMNS,
    SESSION_COLUMNS,
    STATE_COLUMNS,
    TRANSITION_COLUMNS,
    Row,
    ms_to_datetime,
)
from processor.state import VisitorState, visitor_key
from processor.transform import Outputs, Timing, apply_event
from schemas.events import InvalidMessage, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    topic: str = "events"
    group: str = "funnelstream-processor"
    timing: Timing = field(default_factory=Timing)
    batch_max_messages: int = 5000
    batch_max_seconds: float = 0.25
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 10.0


@dataclass(slots=True)
class _Batch:
    outputs: Outputs = field(default_factory=Outputs)
    dead_letters: list[Row] = field(default_factory=list)
    dirty: dict[str, tuple[int, VisitorState]] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    received_ms: list[int] = field(default_factory=list)
    messages: int = 0
    started: float = 0.0

    def empty(self) -> bool:
        return self.messages == 0


class Processor:
    def __init__(
        self,
        log_backend: Log,
        clickhouse: ClickHouse,
        catalog: FunnelCatalog,
        config: ProcessorConfig | None = None,
    ) -> None:
        self._log = log_backend
        self._ch = clickhouse
        self._catalog = catalog
        self.config = config or ProcessorConfig()
        self._states: dict[int, dict[str, VisitorState]] = {}
        self._batch = _Batch()
        self._consumer: LogConsumer | None = None
        self._flush_lock = asyncio.Lock()
        self.processed_messages = 0

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._log.consumer(
            self.config.topic,
            self.config.group,
            RebalanceListener(on_assigned=self._on_assigned, on_revoked=self._on_revoked),
        )
        self._consumer = consumer
        await consumer.start()
        try:
            while not stop.is_set():
                await self.step(consumer)
            await self.flush()
        finally:
            await consumer.stop()
            self._consumer = None

    async def step(self, consumer: LogConsumer) -> None:
        """One turn: poll, apply, and flush if the batch is full or old enough."""
        timeout = self.config.batch_max_seconds
        if not self._batch.empty():
            elapsed = time.monotonic() - self._batch.started
            timeout = max(0.0, self.config.batch_max_seconds - elapsed)
        room = self.config.batch_max_messages - self._batch.messages
        messages = await consumer.poll(max(room, 1), timeout)
        if messages:
            self._apply(messages)
        if not self._batch.empty() and (
            self._batch.messages >= self.config.batch_max_messages
            or time.monotonic() - self._batch.started >= self.config.batch_max_seconds
        ):
            await self.flush()

    # -- decode + apply (pure work, no awaits) --------------------------------------

    def _apply(self, messages: list[LogMessage]) -> None:
        batch = self._batch
        if batch.empty():
            batch.started = time.monotonic()
        now_ms = int(time.time() * 1000)
        for message in messages:
            batch.messages += 1
            batch.next_offsets[message.partition] = message.offset + 1
            try:
                event = decode(message.value)
            except InvalidMessage as exc:
                metrics.PROCESSOR_DEAD_LETTERS.labels(exc.reason).inc()
                batch.dead_letters.append(
                    (
                        ms_to_datetime(now_ms),
                        "processor",
                        exc.reason,
                        exc.detail[:1000],
                        message.partition,
                        message.offset,
                        message.value.decode("utf-8", "replace")[:10000],
                    )
                )
                continue
            states = self._states.setdefault(message.partition, {})
            key = visitor_key(event.project_id, event.visitor_id)
            state = states.get(key)
            if state is None:
                state = states[key] = VisitorState(event.project_id, event.visitor_id)
            before = state.applied_offset
            apply_event(
                state,
                event,
                partition=message.partition,
                offset=message.offset,
                funnels=self._catalog.for_project(event.project_id),
                timing=self.config.timing,
                processed_at_ms=now_ms,
                out=batch.outputs,
            )
            if state.applied_offset != before:
                batch.dirty[key] = (message.partition, state)
                batch.received_ms.append(event.received_at_ms)
        metrics.PROCESSOR_MESSAGES.inc(len(messages))

    # -- write + commit ----------------------------------------------------------------

    async def flush(self) -> None:
        async with self._flush_lock:
            batch = self._batch
            if batch.empty():
                return
            self._batch = _Batch()
            started = time.monotonic()
            await self._write_with_retry(batch)
            metrics.PROCESSOR_WRITE_SECONDS.observe(time.monotonic() - started)
            metrics.PROCESSOR_BATCH_MESSAGES.observe(batch.messages)
            if self._consumer is not None:
                await self._consumer.commit(batch.next_offsets)
                for partition, offset in batch.next_offsets.items():
                    metrics.PROCESSOR_COMMITTED_OFFSET.labels(str(partition)).set(offset)
            now_ms = time.time() * 1000
            for received in batch.received_ms:
                metrics.PROCESSOR_FRESHNESS_SECONDS.observe(max(0.0, now_ms - received) / 1000)
            metrics.PROCESSOR_DUPLICATES.inc(batch.outputs.duplicates)
            metrics.PROCESSOR_TOO_LATE.inc(batch.outputs.too_late)
            metrics.PROCESSOR_VISITORS.set(sum(len(s) for s in self._states.values()))
            self.processed_messages += batch.messages

    async def _write_with_retry(self, batch: _Batch) -> None:
        delay = self.config.retry_initial_seconds
        while True:
            try:
                await self._write(batch)
                return
            except ClickHouseUnavailable as exc:
                metrics.PROCESSOR_WRITE_RETRIES.inc()
                log.warning("ClickHouse write failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_seconds)

    async def _write(self, batch: _Batch) -> None:
        out = batch.outputs
        # Order matters: visitor state goes last, so a state row on disk always implies
        # the rows it produced are on disk too (see processor/state.py).
        await self._ch.insert("events", out.events, EVENT_COLUMNS)
        await self._ch.insert("sessions", list(out.sessions.values()), SESSION_COLUMNS)
        await self._ch.insert(
            "funnel_state", list(out.funnel_states.values()), FUNNEL_STATE_COLUMNS
        )
        await self._ch.insert("funnel_transitions", out.transitions, TRANSITION_COLUMNS)
        await self._ch.insert("dead_letters", batch.dead_letters, DEAD_LETTER_COLUMNS)
        state_rows = [
            (self.config.group, partition, key, state.dumps().decode(), state.applied_offset)
            for key, (partition, state) in batch.dirty.items()
        ]
        await self._ch.insert("processor_state", state_rows, STATE_COLUMNS)

    # -- rebalance -------------------------------------------------------------------

    async def _on_assigned(self, partitions: frozenset[int]) -> None:
        if not partitions:
            return
        rows = await self._load_states(partitions)
        for partition, key, raw in rows:
            project = key.split("\x1f", 1)[0]
            state = VisitorState.loads(raw, self._catalog.step_counts(project))
            self._states.setdefault(partition, {})[key] = state
        log.info("assigned partitions %s, restored %d visitors", sorted(partitions), len(rows))

    async def _load_states(self, partitions: frozenset[int]) -> list[tuple[int, str, str]]:
        delay = self.config.retry_initial_seconds
        while True:
            try:
                rows = await self._ch.query_rows(
                    "SELECT log_partition, visitor_key, state FROM processor_state FINAL "
                    "WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}",
                    {"g": self.config.group, "p": sorted(partitions)},
                )
                return [(int(p), str(k), str(s)) for p, k, s in rows]
            except ClickHouseUnavailable as exc:
                log.warning("loading state failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_seconds)

    async def _on_revoked(self, partitions: frozenset[int]) -> None:
        await self.flush()
        for partition in partitions:
            self._states.pop(partition, None)
        log.info("revoked partitions %s", sorted(partitions))

    async def lag(self) -> dict[int, int]:
        """Messages not yet committed per partition (also exported as a gauge)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        ends = await consumer.end_offsets()
        lags = {}
        for partition, end in ends.items():
            committed = await consumer.committed(partition)
            lags[partition] = end - (committed or 0)
            metrics.PROCESSOR_LAG.labels(str(partition)).set(lags[partition])
        return lags
