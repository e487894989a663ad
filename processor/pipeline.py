"""The processor stage, in the order data moves:

    poll      read messages from the log (per partition in offset order)
    decode    bytes → Event; undecodable or unknown schema → dead letter with a reason
    dedupe    which events are resends of one accepted before: one lookup of the stored
              events per poll (processor/dedupe.py)
    apply     sessionize → advance every funnel (processor/transform.py, pure)
    batch     collect rows until `batch_max_messages` or `batch_max_seconds`, whichever first
    write     events, sessions, visitor identities; then users' progress rebuilt from
              what is stored (processor/user_funnels.py); funnel state, transitions,
              dead letters (table and dead-letter topic), then visitor state
    commit    the next offset per partition, only after the write succeeded

A ClickHouse failure is infrastructure, not a bad message: the same batch is retried with
backoff, consumption waits, and no offset moves past an unwritten batch.

The log can fail too (Kafka down, a rebalance under way), and the processor goes on:

* `poll` failing: back off and poll again; nothing was applied.
* `commit` failing: the batch is already written, so its offsets stay pending and are
  retried with the next commit (after a backoff). Committing late is always safe; a
  replay after a crash is idempotent (processor/state.py).
* Partitions taken away (`on_revoked`): flush and commit for them, then drop their
  visitor states and pending offsets. If that commit fails because another member owns
  them already (we were too slow to rejoin), retrying cannot succeed: drop anyway; the
  new owner loads the states we wrote and replays from the last commit.

Nothing here assumes one member: several processors (processes, or `Processor`s in one
process) share a consumer group, each holding the state of its partitions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import orjson

from funnel.fold import FunnelProgress
from funnelstream import metrics
from funnelstream.backoff import Backoff, BackoffPolicy, retry_forever
from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.log import (
    Log,
    LogConsumer,
    LogMessage,
    LogProducer,
    LogRecord,
    LogUnavailable,
    RebalanceListener,
)
from processor.backfill import (
    apply_rebuilt,
    definition_hash,
    events_sql,
    group_rows,
    rebuild_progress,
)
from processor.catalog import FunnelCatalog
from processor.dedupe import DedupeStore, Delivery, Key, Position
from processor.refold import (
    VISITOR_EVENTS_SQL,
    VISITOR_SESSIONS_SQL,
    VISITOR_TRANSITIONS_SQL,
    Corrections,
    corrections,
    group_events,
    refold,
    stored_transitions_by_visitor,
)
from processor.rows import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    FUNNEL_STATE_COLUMNS,
    IDENTITY_COLUMNS,
    SESSION_COLUMNS,
    STATE_COLUMNS,
    TRANSITION_COLUMNS,
    Row,
    ms_to_datetime,
)
from processor.state import VisitorState, visitor_key
from processor.transform import (
    Outputs,
    Timing,
    apply_event,
    forget_visitor,
    transition_row,
)
from processor.user_funnels import (
    VISITORS_SQL,
    group_by_user,
    user_events_sql,
    user_funnels,
    user_rows,
)
from schemas.events import InvalidMessage, decode
from schemas.funnels import FunnelDefinition

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKFILL_COLUMNS = (
    "consumer_group",
    "log_partition",
    "project_id",
    "funnel_id",
    "definition_hash",
    "done_at",
)


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    topic: str = "events"
    group: str = "funnelstream-processor"
    timing: Timing = field(default_factory=Timing)
    batch_max_messages: int = 5000
    batch_max_seconds: float = 0.25
    poll_max_messages: int = 500
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 10.0
    # A commit or lag lookup that takes longer is treated as failed (broker down).
    log_timeout_seconds: float = 10.0
    # Log calls failing for this long make the "log" component not ready (`problems`);
    # shorter blips (a rebalance, a broker restart) are ridden out by retries.
    log_unready_after_seconds: float = 30.0
    # Where undecodable messages go besides the dead_letters table ("" = "<topic>.dead-letters").
    dead_letter_topic: str = ""

    def dead_letter_topic_name(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dead-letters"


@dataclass(slots=True)
class _Batch:
    outputs: Outputs = field(default_factory=Outputs)
    dead_letters: list[Row] = field(default_factory=list)
    dead_letter_records: list[LogRecord] = field(default_factory=list)
    dirty: dict[str, tuple[int, VisitorState]] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    received_ms: list[int] = field(default_factory=list)
    messages: int = 0
    started: float = 0.0
    # The batch's accepted events, for dedupe until they are written (processor/dedupe.py).
    accepted: dict[Key, Position] = field(default_factory=dict)

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
        self._dedupe = DedupeStore(clickhouse)
        self.config = config or ProcessorConfig()
        self._states: dict[int, dict[str, VisitorState]] = {}
        self._batch = _Batch()
        self._consumer: LogConsumer | None = None
        self._dead_letter_producer: LogProducer | None = None
        self._flush_lock = asyncio.Lock()
        # Written to ClickHouse, not committed yet: partition → next offset.
        self._uncommitted: dict[int, int] = {}
        self._policy = BackoffPolicy(
            self.config.retry_initial_seconds, self.config.retry_max_seconds
        )
        self._commit_backoff = Backoff(self._policy)
        self._poll_backoff = Backoff(self._policy)
        # Why ClickHouse is being retried right now; per log call ("start", "poll",
        # "commit"): since when it fails and why. Read by `problems()`.
        self._clickhouse_problem: str | None = None
        self._log_problems: dict[str, tuple[float, str]] = {}
        # Set when `run` fails: nothing more is written or committed (see `run`).
        self._crashed = False
        self.processed_messages = 0
        # Per partition: (project, funnel) → definition hash whose live state is built.
        self._backfilled: dict[int, dict[tuple[str, str], str]] = {}
        self._backfill_due = True
        self._catalog_version = -1

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._log.consumer(
            self.config.topic,
            self.config.group,
            RebalanceListener(on_assigned=self._on_assigned, on_revoked=self._on_revoked),
        )
        self._consumer = consumer
        await self._start(consumer, stop)
        try:
            while not stop.is_set():
                await self.step(consumer)
            await self.flush()
        except BaseException:
            # The batch may be half-applied (a fold raised) or unwritable (a query error):
            # leaving, write and commit nothing, so the restarted processor replays it.
            self._crashed = True
            raise
        finally:
            await consumer.stop()
            self._consumer = None
            if self._dead_letter_producer is not None:
                await self._dead_letter_producer.stop()
                self._dead_letter_producer = None

    async def _start(self, consumer: LogConsumer, stop: asyncio.Event) -> None:
        backoff = Backoff(self._policy)
        while not stop.is_set():
            try:
                if self._dead_letter_producer is None:
                    topic = self.config.dead_letter_topic_name()
                    await self._log.ensure_topic(topic, 1)
                    producer = self._log.producer(topic)
                    await producer.start()
                    self._dead_letter_producer = producer
                await consumer.start()
                self._log_problems.pop("start", None)
                return
            except LogUnavailable as exc:
                self._log_problem("start", exc)
                log.warning("log consumer did not start, retrying in %.1fs: %s", backoff.delay, exc)
                await backoff.wait()

    async def step(self, consumer: LogConsumer) -> None:
        """One turn: poll, apply, and flush if the batch is full or old enough."""
        timeout = self.config.batch_max_seconds
        if not self._batch.empty():
            elapsed = time.monotonic() - self._batch.started
            timeout = max(0.0, self.config.batch_max_seconds - elapsed)
        room = self.config.batch_max_messages - self._batch.messages
        try:
            # Small polls keep each synchronous apply short, so an ingest or query API
            # sharing this event loop (embedded mode) is never stalled for long.
            limit = min(max(room, 1), self.config.poll_max_messages)
            messages = await consumer.poll(limit, timeout)
        except LogUnavailable as exc:
            # Nothing was applied; what is batched stays batched and is flushed below.
            metrics.PROCESSOR_LOG_ERRORS.labels("poll").inc()
            self._log_problem("poll", exc)
            log.warning("poll failed, retrying in %.1fs: %s", self._poll_backoff.delay, exc)
            await self._poll_backoff.wait()
            messages = []
        else:
            self._poll_backoff.reset()
            self._log_problems.pop("poll", None)
        if messages:
            # Under the flush lock, so no flush (a rebalance's) runs between the lookup and
            # the apply: it would swap the batch whose pending ids the lookup checked
            # against, and drop the states of revoked partitions.
            async with self._flush_lock:
                deliveries = self._decode(messages)
                resends = await self._retry(
                    "dedupe lookup",
                    lambda: self._dedupe.seen(deliveries, self._batch.accepted),
                )
                self._apply(deliveries, resends)
        if self._backfill_due or self._catalog.version != self._catalog_version:
            await self._backfill(consumer)
        if not self._batch.empty() and (
            self._batch.messages >= self.config.batch_max_messages
            or time.monotonic() - self._batch.started >= self.config.batch_max_seconds
        ):
            await self.flush()
        elif self._uncommitted and self._commit_backoff.due():
            # An earlier commit failed and no new batch came to carry it: retry alone.
            await self.flush()

    # -- decode, apply (pure work, no awaits) ----------------------------------------

    def _decode(self, messages: list[LogMessage]) -> list[Delivery]:
        """Count the messages into the batch; the undecodable go to dead letters."""
        batch = self._batch
        if batch.empty():
            batch.started = time.monotonic()
        now_ms = int(time.time() * 1000)
        deliveries = []
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
                batch.dead_letter_records.append(
                    LogRecord(
                        message.key,
                        orjson.dumps(
                            {
                                "reason": exc.reason,
                                "detail": exc.detail[:1000],
                                "topic": self.config.topic,
                                "partition": message.partition,
                                "offset": message.offset,
                                "payload": message.value.decode("utf-8", "replace"),
                            }
                        ),
                        now_ms,
                    )
                )
                continue
            deliveries.append(Delivery(message.partition, message.offset, event))
        metrics.PROCESSOR_MESSAGES.inc(len(messages))
        return deliveries

    def _apply(self, deliveries: list[Delivery], resends: set[Position]) -> None:
        batch = self._batch
        now_ms = int(time.time() * 1000)
        for message in deliveries:
            event = message.event
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
                duplicate=message.position in resends,
            )
            if state.applied_offset != before:
                batch.dirty[key] = (message.partition, state)
                batch.received_ms.append(event.received_at_ms)
        for funnel, error in batch.outputs.failed.values():
            log.error("funnel %s/%s failed on an event", funnel.project, funnel.id, exc_info=error)
            self._catalog.quarantine(funnel, f"{type(error).__name__}: {error}")
        batch.outputs.failed.clear()

    # -- write + commit ----------------------------------------------------------------

    async def flush(self, revoking: frozenset[int] = frozenset()) -> None:
        """Write the batch, then commit every written offset of the partitions we hold.

        `revoking` names partitions being taken away right now: the consumer no longer
        lists them as held, but this is the last chance to commit for them.
        """
        async with self._flush_lock:
            batch = self._batch
            if not batch.empty():
                self._batch = _Batch()
                started = time.monotonic()
                await self._write_with_retry(batch)
                metrics.PROCESSOR_WRITE_SECONDS.observe(time.monotonic() - started)
                metrics.PROCESSOR_BATCH_MESSAGES.observe(batch.messages)
                self._uncommitted.update(batch.next_offsets)
            if self._uncommitted and (not batch.empty() or revoking or self._commit_backoff.due()):
                await self._commit(revoking)
            if batch.empty():
                return
            now_ms = time.time() * 1000
            for received in batch.received_ms:
                metrics.PROCESSOR_FRESHNESS_SECONDS.observe(max(0.0, now_ms - received) / 1000)
            metrics.PROCESSOR_DUPLICATES.inc(batch.outputs.duplicates)
            metrics.PROCESSOR_TOO_LATE.inc(batch.outputs.too_late)
            metrics.PROCESSOR_VISITORS.set(sum(len(s) for s in self._states.values()))
            self.processed_messages += batch.messages

    async def _commit(self, revoking: frozenset[int]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        # Only partitions this member still owns: an offset of a partition that moved
        # stays pending until `_on_revoked` decides about it.
        owned = consumer.assignment() | revoking
        offsets = {p: o for p, o in self._uncommitted.items() if p in owned}
        if not offsets:
            return
        try:
            async with asyncio.timeout(self.config.log_timeout_seconds):
                await consumer.commit(offsets)
        except (LogUnavailable, TimeoutError) as exc:
            metrics.PROCESSOR_LOG_ERRORS.labels("commit").inc()
            self._log_problem("commit", exc)
            self._commit_backoff.failed()
            log.warning(
                "commit of %s failed; kept pending, retry in %.1fs: %s",
                offsets,
                self._commit_backoff.delay,
                exc,
            )
            return
        self._commit_backoff.reset()
        self._log_problems.pop("commit", None)
        for partition, offset in offsets.items():
            if self._uncommitted.get(partition) == offset:
                del self._uncommitted[partition]
            metrics.PROCESSOR_COMMITTED_OFFSET.labels(str(partition)).set(offset)

    async def _write_with_retry(self, batch: _Batch) -> None:
        # The dead-letter topic is written in the batch too, hence LogUnavailable.
        await self._retry(
            "batch write",
            lambda: self._write(batch),
            (ClickHouseUnavailable, LogUnavailable),
            metrics.PROCESSOR_WRITE_RETRIES.inc,
        )

    async def _write(self, batch: _Batch) -> None:
        out = batch.outputs
        # Order matters: visitor state goes last, so a state row on disk always implies
        # the rows it produced are on disk too (see processor/state.py).
        await self._ch.insert("events", out.events, EVENT_COLUMNS)
        await self._ch.insert("sessions", list(out.sessions.values()), SESSION_COLUMNS)
        await self._ch.insert("visitor_identities", out.identities, IDENTITY_COLUMNS)
        # After the events and identities, so the rebuild reads them (user_funnels.py).
        fresh = {str(row[1]) for row in out.events} if out.users else set()
        user_states, user_transitions = await self._rebuild_users(out.users, fresh)
        await self._ch.insert(
            "funnel_state", list(out.funnel_states.values()) + user_states, FUNNEL_STATE_COLUMNS
        )
        # Three inserts: as they happened, retractions, rows after corrections (transform.py).
        inserts = out.transition_inserts()
        inserts[0] = inserts[0] + user_transitions
        for rows in inserts:
            await self._ch.insert("funnel_transitions", rows, TRANSITION_COLUMNS)
        if out.refold:
            # After every row of the batch, so the re-fold reads them and its rows win.
            await self._refold(batch)
        await self._ch.insert("dead_letters", batch.dead_letters, DEAD_LETTER_COLUMNS)
        if batch.dead_letter_records and self._dead_letter_producer is not None:
            # At least once, like the table: a replay after a crash may repeat a record.
            await self._dead_letter_producer.append(batch.dead_letter_records)
        state_rows = [
            (self.config.group, partition, key, state.dumps().decode(), state.applied_offset)
            for key, (partition, state) in batch.dirty.items()
        ]
        await self._ch.insert("processor_state", state_rows, STATE_COLUMNS)

    async def _refold(self, batch: _Batch) -> None:
        """Re-fold the visitors that received an event too late for their live state from
        their stored events; write the corrections; replace their states (refold.py)."""
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        by_project: dict[str, list[str]] = {}
        for project, visitor in sorted(batch.outputs.refold):
            by_project.setdefault(project, []).append(visitor)
        fixes = Corrections()
        replaced: dict[str, tuple[int, VisitorState]] = {}
        for project, visitors in by_project.items():
            funnels = self._catalog.for_project(project)
            params = {
                "project": project,
                "visitors": visitors,
                "funnels": [f.id for f in funnels],
            }
            events = group_events(await self._ch.query_rows(VISITOR_EVENTS_SQL, params))
            sessions: dict[str, set[str]] = {}
            for visitor, session_id in await self._ch.query_rows(VISITOR_SESSIONS_SQL, params):
                sessions.setdefault(str(visitor), set()).add(str(session_id))
            stored = stored_transitions_by_visitor(
                await self._ch.query_rows(VISITOR_TRANSITIONS_SQL, params) if funnels else []
            )
            for visitor in visitors:
                key = visitor_key(project, visitor)
                partition, old = batch.dirty[key]
                new = refold(old, events.get(visitor, []), funnels, self.config.timing, now_ms)
                fixes.extend(
                    corrections(
                        old,
                        new,
                        sessions.get(visitor, set()),
                        stored.get(visitor, {}),
                        funnels,
                        old.applied_offset,
                        now_ms,
                    )
                )
                replaced[key] = (partition, new.state)
        await self._ch.insert("sessions", fixes.sessions, SESSION_COLUMNS)
        await self._ch.insert("funnel_state", fixes.funnel_states, FUNNEL_STATE_COLUMNS)
        # Retractions first, in their own insert: the correction that follows shares
        # their key in funnel_transitions, and the later insert is the one kept.
        await self._ch.insert("funnel_transitions", fixes.retractions, TRANSITION_COLUMNS)
        await self._ch.insert("funnel_transitions", fixes.transitions, TRANSITION_COLUMNS)
        for key, (partition, state) in replaced.items():
            batch.dirty[key] = (partition, state)
            held = self._states.get(partition)
            if held is not None and key in held:
                held[key] = state
        metrics.PROCESSOR_REFOLDED_VISITORS.inc(len(replaced))
        metrics.PROCESSOR_CORRECTIONS.labels("retracted").inc(len(fixes.retractions))
        metrics.PROCESSOR_CORRECTIONS.labels("corrected").inc(len(fixes.transitions))
        metrics.PROCESSOR_REFOLD_SECONDS.observe(time.monotonic() - started)

    async def _rebuild_users(
        self,
        users: set[tuple[str, str]],
        fresh: set[str] | None,
        only: FunnelDefinition | None = None,
    ) -> tuple[list[Row], list[Row]]:
        """Funnel-state and transition rows of touched users' `count_by: "user"` funnels
        (or of `only`), rebuilt from the stored events of the visitors counting for them.
        `fresh`: event ids whose transitions to write (None: all, for a backfill)."""
        by_project: dict[str, list[str]] = {}
        for project, user in sorted(users):
            by_project.setdefault(project, []).append(user)
        states: list[Row] = []
        transitions: list[Row] = []
        for project, names in by_project.items():
            funnels = [only] if only else user_funnels(self._catalog.for_project(project))
            if not funnels:
                continue
            started = time.monotonic()
            # The version is when the reads begin, on ClickHouse's clock: the newest row
            # of a user then covers every write that finished before any rebuild of it.
            ((version, members),) = await self._ch.query_rows(
                VISITORS_SQL, {"project": project, "users": names}
            )
            visitors = sorted({str(v) for _, v in members})
            sql, events = user_events_sql(funnels)
            rows = (
                await self._ch.query_rows(
                    sql, {"project": project, "visitors": visitors, "events": events}
                )
                if visitors
                else []
            )
            user_states, user_transitions = user_rows(
                project,
                funnels,
                group_by_user(names, members, rows),
                int(version),
                self.config.timing.lateness_ms,
                fresh,
                int(time.time() * 1000),
                session_gap_ms=self.config.timing.session_gap_ms,
            )
            states += user_states
            transitions += user_transitions
            metrics.PROCESSOR_USERS_REBUILT.inc(len(names))
            metrics.PROCESSOR_USER_REBUILD_SECONDS.observe(time.monotonic() - started)
        return states, transitions

    # -- rebalance -------------------------------------------------------------------

    async def _on_assigned(self, partitions: frozenset[int]) -> None:
        if not partitions:
            return
        markers = await self._retry(
            "loading backfill markers",
            lambda: self._ch.query_rows(
                "SELECT log_partition, project_id, funnel_id, definition_hash "
                "FROM funnel_backfills FINAL WHERE consumer_group = {g:String} "
                "AND log_partition IN {p:Array(UInt32)}",
                {"g": self.config.group, "p": sorted(partitions)},
            ),
        )
        for partition in partitions:
            self._backfilled[partition] = {}
        for partition, project, funnel_id, digest in markers:
            self._backfilled[int(partition)][(str(project), str(funnel_id))] = str(digest)
        self._backfill_due = True
        rows = await self._load_states(partitions)
        for partition, key, raw in rows:
            project = key.split("\x1f", 1)[0]
            state = VisitorState.loads(raw, self._catalog.step_counts(project))
            self._states.setdefault(partition, {})[key] = state
        log.info("assigned partitions %s, restored %d visitors", sorted(partitions), len(rows))

    async def _retry(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        retry_on: tuple[type[Exception], ...] = (ClickHouseUnavailable,),
        on_retry: Callable[[], object] | None = None,
    ) -> T:
        """Retry a call with the shared backoff until it succeeds. Only infrastructure
        errors are retried: a `ClickHouseQueryError` (or any bug) propagates and fails
        the processor loudly; its supervisor restarts it."""

        def retrying(exc: BaseException, delay: float) -> None:
            if isinstance(exc, ClickHouseUnavailable):
                self._clickhouse_problem = f"{what} failing, retrying in {delay:.1f}s: {exc}"
            else:
                self._log_problem(what, exc)
            if on_retry is not None:
                on_retry()

        result = await retry_forever(self._policy, what, call, retry_on, retrying)
        self._clickhouse_problem = None
        self._log_problems.pop(what, None)
        return result

    def _log_problem(self, call: str, exc: BaseException) -> None:
        since = self._log_problems.get(call, (time.monotonic(), ""))[0]
        self._log_problems[call] = (since, f"{call} failing: {exc}")

    def problems(self) -> dict[str, str]:
        """Parts this processor depends on that are failing now, with the reason:
        "clickhouse" while a read or write is being retried, "log" once a log call has
        failed for `log_unready_after_seconds`."""
        out = {}
        if self._clickhouse_problem is not None:
            out["clickhouse"] = self._clickhouse_problem
        now = time.monotonic()
        long = [
            reason
            for since, reason in self._log_problems.values()
            if now - since >= self.config.log_unready_after_seconds
        ]
        if long:
            out["log"] = "; ".join(sorted(long))
        return out

    async def _backfill(self, consumer: LogConsumer) -> None:
        """Build live state for funnels defined after their events were stored."""
        self._catalog_version = self._catalog.version
        self._backfill_due = False
        held = consumer.assignment()
        todo = []
        for funnel in self._catalog.all():
            digest = definition_hash(funnel)
            key = (funnel.project, funnel.id)
            parts = [p for p in sorted(held) if self._backfilled.get(p, {}).get(key) != digest]
            if parts:
                todo.append((funnel, digest, parts))
        if not todo:
            return
        # Every absorbed event must be in the events table before it is read back.
        await self.flush()
        for funnel, digest, parts in todo:
            await self._backfill_one(funnel, digest, parts)

    async def _backfill_one(self, funnel: FunnelDefinition, digest: str, parts: list[int]) -> None:
        started = time.monotonic()
        rows = await self._retry(
            "backfill read",
            lambda: self._ch.query_rows(
                events_sql(funnel),
                {"project": funnel.project, "events": funnel.event_names(), "partitions": parts},
            ),
        )
        grouped = group_rows(rows)
        now_ms = int(time.time() * 1000)
        out = Outputs()
        dirty: list[tuple[int, str, VisitorState]] = []
        users: set[tuple[str, str]] = set()
        for partition in parts:
            for key, state in self._states.get(partition, {}).items():
                if state.project_id != funnel.project:
                    continue
                if funnel.count_by == "user" and state.identity is not None:
                    # Counted in its user's row, rebuilt below from every user's visitor.
                    users.add((funnel.project, state.identity[1]))
                    if forget_visitor(state, funnel, state.applied_offset, now_ms, out):
                        dirty.append((partition, key, state))
                    continue
                events = grouped.get((partition, state.visitor_id))
                if events is None and funnel.id not in state.funnels:
                    continue
                progress, transitions = rebuild_progress(
                    funnel,
                    events or [],
                    state.newest_ms,
                    self.config.timing.lateness_ms,
                    session_gap_ms=self.config.timing.session_gap_ms,
                )
                apply_rebuilt(state, funnel, progress)
                shown = progress or FunnelProgress(steps=len(funnel.steps))
                out.pending_funnel_states[(funnel.project, funnel.id, state.visitor_id)] = (
                    shown,
                    state.applied_offset,
                    now_ms,
                )
                for t in transitions:
                    out.add_transition(
                        transition_row(funnel.project, funnel.id, state.visitor_id, t, now_ms)
                    )
                dirty.append((partition, key, state))
        state_rows = [
            (self.config.group, p, key, state.dumps().decode(), state.applied_offset)
            for p, key, state in dirty
        ]
        markers = [
            (self.config.group, p, funnel.project, funnel.id, digest, ms_to_datetime(now_ms))
            for p in parts
        ]

        async def write() -> None:
            user_states, user_transitions = await self._rebuild_users(users, None, funnel)
            await self._ch.insert(
                "funnel_state", list(out.funnel_states.values()) + user_states, FUNNEL_STATE_COLUMNS
            )
            inserts = out.transition_inserts()
            inserts[0] = inserts[0] + user_transitions
            for rows in inserts:
                await self._ch.insert("funnel_transitions", rows, TRANSITION_COLUMNS)
            await self._ch.insert("processor_state", state_rows, STATE_COLUMNS)
            # The marker goes last: a crash before it redoes this (identical) backfill.
            await self._ch.insert("funnel_backfills", markers, BACKFILL_COLUMNS)

        await self._retry("backfill write", write)
        for p in parts:
            self._backfilled.setdefault(p, {})[(funnel.project, funnel.id)] = digest
        log.info(
            "backfilled funnel %s/%s over partitions %s: %d visitors in %.2fs",
            funnel.project,
            funnel.id,
            parts,
            len(dirty),
            time.monotonic() - started,
        )

    async def _load_states(self, partitions: frozenset[int]) -> list[tuple[int, str, str]]:
        rows = await self._retry(
            "loading state",
            lambda: self._ch.query_rows(
                "SELECT log_partition, visitor_key, state FROM processor_state FINAL "
                "WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}",
                {"g": self.config.group, "p": sorted(partitions)},
            ),
        )
        return [(int(p), str(k), str(s)) for p, k, s in rows]

    async def _on_revoked(self, partitions: frozenset[int]) -> None:
        if not self._crashed:
            await self.flush(revoking=partitions)
        lost = {p: o for p, o in self._uncommitted.items() if p in partitions}
        if lost:
            # The last commit for them failed. If another member owns them already, no
            # retry can succeed; it resumes from the previous commit and skips, per
            # visitor, what the states we wrote say was applied.
            log.warning("giving up uncommitted offsets %s of revoked partitions", lost)
        for partition in partitions:
            self._uncommitted.pop(partition, None)
            self._states.pop(partition, None)
            with contextlib.suppress(KeyError):
                metrics.PROCESSOR_LAG.remove(str(partition))
        metrics.PROCESSOR_VISITORS.set(sum(len(s) for s in self._states.values()))
        log.info("revoked partitions %s", sorted(partitions))

    async def lag(self) -> dict[int, int]:
        """Messages not yet committed per partition held (also exported as a gauge).

        Raises `LogUnavailable` when the log does not answer in time.
        """
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        try:
            async with asyncio.timeout(self.config.log_timeout_seconds):
                ends = await consumer.end_offsets()
                for partition, end in ends.items():
                    committed = await consumer.committed(partition)
                    lags[partition] = max(0, end - (committed or 0))
        except TimeoutError as exc:
            raise LogUnavailable("lag lookup timed out") from exc
        for partition, value in lags.items():
            metrics.PROCESSOR_LAG.labels(str(partition)).set(value)
        return lags

    def assignment(self) -> frozenset[int]:
        """The partitions this processor holds now."""
        return self._consumer.assignment() if self._consumer is not None else frozenset()
