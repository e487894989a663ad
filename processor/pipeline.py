"""The processor stage: a chain of small steps, in the order data moves, assembled once
(`build_steps`, below) and driven by `Processor`'s loop:

    poll      read messages from the log (per partition in offset order)
    decode    bytes → Event; undecodable or unknown schema → dead letter with a reason
              (processor/decode.py)
    dedupe    which events are resends of one accepted before: one lookup of the stored
              events per poll (processor/dedupe.py)
    apply     sessionize → advance every funnel (processor/apply.py around the pure
              processor/transform.py)
    batch     collect rows until `batch_max_messages` or `batch_max_seconds`, whichever
              first, or `batch_idle_seconds` once the log is drained (processor/batch.py)
    sink      write the batch, tables in the one order declared in processor/sink.py
    commit    the next offset per partition, only after the write succeeded
              (processor/commit.py)

An erasure record in a poll (schemas/erasure.py) splits it: the messages before it go
through the steps and are written and committed, then the visitor is erased from every
table and from memory (processor/erase.py), then the messages after it go on.

Between polls the loop also runs backfills (processor/backfills.py): live state for a
funnel saved after its events were stored.

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
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

from funnelstream import metrics
from funnelstream.backoff import Backoff, BackoffPolicy
from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.log import Log, LogConsumer, LogMessage, LogUnavailable, RebalanceListener
from funnelstream.logs import batch_context
from processor.apply import Applier
from processor.backfills import Backfiller
from processor.batch import Batch, BatchPolicy
from processor.catalog import FunnelCatalog
from processor.collector import StepCollector
from processor.commit import Committer
from processor.decode import Decoder
from processor.dedupe import DedupeStore
from processor.erase import Eraser, segments
from processor.funnel_metrics import FunnelMetrics
from processor.rebuild import LateRefolder, UserRebuilder
from processor.restore import stored_states
from processor.retry import Retrier
from processor.sink import BATCH_ORDER, Sink, Writes
from processor.state import HeldStates, VisitorState
from processor.transform import Timing
from schemas.erasure import Erasure
from schemas.funnels import FunnelDefinition

log = logging.getLogger(__name__)

# Events folded between two turns of the event loop (about 20 ms of fold).
APPLY_SLICE = 500
# The longest a poll waits: how long a stop may wait for the loop to see it.
STOP_LATENCY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    topic: str = "events"
    group: str = "funnelstream-processor"
    timing: Timing = field(default_factory=Timing)
    # Each write costs the engine a fixed ~15-50 ms per table (a new part per insert), so
    # under a backlog a batch grows up to these bounds; with the log drained it is written
    # once `batch_idle_seconds` old (processor/batch.py).
    batch_max_messages: int = 20000
    batch_max_seconds: float = 1.0
    batch_idle_seconds: float = 0.25
    # One dedupe lookup per poll: its cost is mostly fixed (~7 ms), so polls are large
    # and folded in slices (`APPLY_SLICE`).
    poll_max_messages: int = 2000
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 10.0
    # A commit or lag lookup that takes longer is treated as failed (broker down).
    log_timeout_seconds: float = 10.0
    # Log calls failing for this long make the "log" component not ready (`problems`);
    # shorter blips (a rebalance, a broker restart) are ridden out by retries.
    log_unready_after_seconds: float = 30.0
    # Visitors per backfill chunk: one chunk is read, folded and written per loop turn,
    # so this bounds the memory a backfill holds and how long live events wait for it.
    backfill_chunk_visitors: int = 2000
    # Where undecodable messages go besides the dead_letters table ("" = "<topic>.dead-letters").
    dead_letter_topic: str = ""
    # Saved funnels per project exported as funnel metrics (processor/funnel_metrics.py).
    metrics_funnels_per_project: int = 50

    def dead_letter_topic_name(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dead-letters"


@dataclass(frozen=True, slots=True)
class Steps:
    """The chain, built once per processor by `build_steps`."""

    retrier: Retrier
    states: HeldStates
    decoder: Decoder
    dedupe: DedupeStore
    applier: Applier
    policy: BatchPolicy
    sink: Sink
    committer: Committer
    backfiller: Backfiller
    eraser: Eraser
    funnel_metrics: FunnelMetrics


def build_steps(
    log_backend: Log, clickhouse: ClickHouse, catalog: FunnelCatalog, config: ProcessorConfig
) -> Steps:
    """The one place the steps are made and wired to each other."""
    retrier = Retrier(
        BackoffPolicy(config.retry_initial_seconds, config.retry_max_seconds),
        config.log_unready_after_seconds,
    )
    states = HeldStates()

    def funnels_for(partition: int, project: str, key: str) -> list[FunnelDefinition]:
        # The funnels a visitor's events advance, live or re-folded: all the project's but
        # those whose backfill has not reached the visitor yet (bound once it exists).
        return backfiller.funnels_for(partition, project, key)

    users = UserRebuilder(clickhouse, catalog, config.timing)
    sink = Sink(
        clickhouse,
        log_backend,
        config.group,
        config.dead_letter_topic_name(),
        states,
        users,
        LateRefolder(clickhouse, catalog, config.timing, funnels_for),
    )
    backfiller = Backfiller(
        clickhouse,
        catalog,
        states,
        sink,
        retrier,
        config.group,
        config.timing,
        config.backfill_chunk_visitors,
    )
    return Steps(
        retrier=retrier,
        states=states,
        decoder=Decoder(config.topic),
        dedupe=DedupeStore(clickhouse),
        applier=Applier(states, catalog, config.timing, funnels_for),
        policy=BatchPolicy(
            config.batch_max_messages,
            config.batch_max_seconds,
            config.poll_max_messages,
            config.batch_idle_seconds,
        ),
        sink=sink,
        committer=Committer(retrier, config.log_timeout_seconds),
        backfiller=backfiller,
        eraser=Eraser(
            clickhouse,
            states,
            users,
            log_backend,
            (config.topic, config.dead_letter_topic_name()),
        ),
        funnel_metrics=FunnelMetrics(catalog, config.metrics_funnels_per_project),
    )


class Processor:
    """The loop (poll → steps → flush) and the rebalance listener."""

    def __init__(
        self,
        log_backend: Log,
        clickhouse: ClickHouse,
        catalog: FunnelCatalog,
        config: ProcessorConfig | None = None,
    ) -> None:
        self.config = config or ProcessorConfig()
        self._log = log_backend
        self._ch = clickhouse
        self._catalog = catalog
        self._steps = build_steps(log_backend, clickhouse, catalog, self.config)
        self._batch = Batch()
        self._consumer: LogConsumer | None = None
        # Held while a poll is deduped and applied, and while a batch is swapped out and
        # written: a rebalance's flush never runs in between (see `step`).
        self._flush_lock = asyncio.Lock()
        self._poll_backoff = Backoff(self._steps.retrier.policy)
        # Set when `run` fails: nothing more is written or committed (see `run`).
        self._crashed = False
        self.processed_messages = 0
        # Garbage collection around the I/O calls while `run` runs (processor/collector.py).
        self._collector = StepCollector()
        # Messages applied (folded) so far, written or not.
        self.applied_messages = 0
        # Messages applied and dropped unwritten because the group had moved on (`_fenced`).
        self.fenced_messages = 0
        # Fenced out of the group: apply, write and erase nothing until the revocation
        # that must follow (the states held are no longer what was written).
        self._fenced_out = False

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        collector = self._collector
        collector.start()
        consumer = self._log.consumer(
            self.config.topic,
            self.config.group,
            RebalanceListener(on_assigned=self._on_assigned, on_revoked=self._on_revoked),
        )
        self._consumer = consumer
        await self._start(consumer, stop)
        try:
            while not stop.is_set():
                before = self.applied_messages
                await self.step(consumer)
                collector.after_step(self.applied_messages - before)
            await self.flush()
        except BaseException:
            # The batch may be half-applied (a fold raised) or unwritable (a query error):
            # leaving, write and commit nothing, so the restarted processor replays it.
            self._crashed = True
            raise
        finally:
            collector.stop()
            await consumer.stop()
            self._consumer = None
            await self._steps.sink.stop()

    async def _start(self, consumer: LogConsumer, stop: asyncio.Event) -> None:
        backoff = Backoff(self._steps.retrier.policy)
        while not stop.is_set():
            try:
                await self._steps.sink.start()
                await consumer.start()
                self._steps.retrier.log_ok("start")
                return
            except LogUnavailable as exc:
                self._steps.retrier.log_failed("start", exc)
                log.warning("log consumer did not start, retrying in %.1fs: %s", backoff.delay, exc)
                await backoff.wait()

    async def step(self, consumer: LogConsumer) -> None:
        """One turn: poll, apply, and flush if the batch is full or old enough."""
        steps = self._steps
        # While a backfill has chunks left, a poll takes what is there without waiting.
        backfilling = steps.backfiller.busy()
        timeout = 0.0 if backfilling else steps.policy.poll_timeout(self._batch, time.monotonic())
        # The loop sees a stop between polls: a poll waiting out a long batch period
        # (`batch_max_seconds`) would hold the stop past the supervisor's grace period,
        # which then cancels the processor with its batch unwritten.
        timeout = min(timeout, STOP_LATENCY_SECONDS)
        limit = steps.policy.poll_limit(self._batch)
        try:
            with self._collector.io():
                messages = await consumer.poll(limit, timeout)
        except LogUnavailable as exc:
            # Nothing was applied; what is batched stays batched and is flushed below.
            metrics.PROCESSOR_LOG_ERRORS.labels("poll").inc()
            steps.retrier.log_failed("poll", exc)
            log.warning("poll failed, retrying in %.1fs: %s", self._poll_backoff.delay, exc)
            await self._poll_backoff.wait()
            messages = []
        else:
            self._poll_backoff.reset()
            steps.retrier.log_ok("poll")
            steps.policy.polled(self._batch, limit, len(messages))
        for segment in segments(messages):
            if segment.messages:
                await self._apply(segment.messages)
            if segment.erasure is not None:
                await self._erase(*segment.erasure)
        if backfilling:
            # One chunk per turn: live events flow between chunks, a stop is seen.
            with self._collector.io():
                await steps.backfiller.run_chunk(self.flush)
        if steps.policy.due(self._batch, time.monotonic()) or steps.committer.retry_due():
            # Due, or an earlier commit failed and no new batch came to carry it.
            await self.flush()

    async def _apply(self, messages: list[LogMessage]) -> None:
        steps = self._steps
        if self._fenced_out:
            # Their partitions are another member's now; whoever owns them next reads
            # them again from the last commit (a new assignment starts there).
            self.fenced_messages += len(messages)
            return
        self.applied_messages += len(messages)
        # Under the flush lock, so no flush (a rebalance's) runs between the lookup and
        # the apply: it would swap the batch whose pending ids the lookup checked
        # against, and drop the states of revoked partitions.
        async with self._flush_lock, _logged(self._batch):
            batch = self._batch
            deliveries = steps.decoder.decode(messages, batch)
            with self._collector.io():
                resends = await steps.retrier.retry(
                    "dedupe lookup", lambda: steps.dedupe.seen(deliveries, batch.accepted)
                )
            # One lookup per poll (its cost is mostly fixed), the fold in slices with the
            # loop let through in between: a query API sharing it waits one slice at most.
            # A visitor's events stay in log order across slices, so folding them in two
            # calls is folding them in one.
            for start in range(0, len(deliveries), APPLY_SLICE):
                steps.applier.apply(deliveries[start : start + APPLY_SLICE], resends, batch)
                await asyncio.sleep(0)

    async def _erase(self, message: LogMessage, erasure: Erasure) -> None:
        """Erase a visitor where the log says: after writing (and committing) everything
        before the record, and before its offset counts, so the commit passes it only
        once the deletes are done."""
        steps = self._steps
        await self.flush()
        if self._fenced_out:
            return  # the partition's next owner erases it, in log order
        async with self._flush_lock:
            await steps.retrier.retry(
                "erasure",
                lambda: steps.eraser.erase(erasure, (message.partition, message.offset)),
                (ClickHouseUnavailable, LogUnavailable),
            )
            self._batch.count(message.partition, message.offset)
        # The erasure id only: a log line naming the visitor would outlive the erasure.
        log.info("erasure %s done", erasure.erasure_id)

    # -- write + commit ----------------------------------------------------------------

    async def flush(self, revoking: frozenset[int] = frozenset()) -> None:
        """Write the batch, then commit every written offset of the partitions we hold.

        `revoking` names partitions being taken away right now: the consumer no longer
        lists them as held, but this is the last chance to commit for them.
        """
        steps = self._steps
        async with self._flush_lock, _logged(self._batch):
            batch = self._batch
            consumer = self._consumer
            if not batch.empty() and (
                self._fenced_out
                or (consumer is not None and await consumer.fenced(batch.first_offsets))
            ):
                self._fenced(batch)
                return
            if not batch.empty():
                self._batch = Batch()
                started = time.monotonic()
                writes = Writes.of_batch(batch, self.config.group)
                # The dead-letter topic is written in the batch too, hence LogUnavailable.
                with self._collector.io():
                    await steps.retrier.retry(
                        "batch write",
                        lambda: steps.sink.write(writes, BATCH_ORDER),
                        (ClickHouseUnavailable, LogUnavailable),
                        metrics.PROCESSOR_WRITE_RETRIES.inc,
                    )
                _log_written(batch, writes)
                metrics.PROCESSOR_WRITE_SECONDS.observe(time.monotonic() - started)
                metrics.PROCESSOR_BATCH_MESSAGES.observe(batch.messages)
                steps.funnel_metrics.count_written(writes.outputs, writes.refolds)
                steps.committer.written(batch.next_offsets)
            if (
                consumer is not None
                and steps.committer.pending
                and (not batch.empty() or revoking or steps.committer.retry_due())
            ):
                with self._collector.io():
                    await steps.committer.commit(consumer, revoking)
            if batch.empty():
                return
            now_ms = time.time() * 1000
            metrics.observe_many(
                metrics.PROCESSOR_FRESHNESS_SECONDS,
                (max(0.0, now_ms - received) / 1000 for received in batch.received_ms),
            )
            metrics.PROCESSOR_DUPLICATES.inc(batch.outputs.duplicates)
            metrics.PROCESSOR_TOO_LATE.inc(batch.outputs.too_late)
            metrics.PROCESSOR_VISITORS.set(len(steps.states))
            self.processed_messages += batch.messages

    def _fenced(self, batch: Batch) -> None:
        """The group moved on while this member stalled: drop the batch unwritten, and
        the visitor states it advanced, rather than race the partitions' new owners with
        stale rows. They replay it from the last commit; the revocation that follows
        drops the rest, and a new assignment loads the states anew."""
        self._fenced_out = True
        self._batch = Batch()
        self._steps.states.drop(frozenset(batch.next_offsets))
        self._steps.committer.forget(frozenset(batch.next_offsets))
        self.fenced_messages += batch.messages
        metrics.PROCESSOR_LOG_ERRORS.labels("fenced").inc()
        log.warning(
            "fenced out of the group (stalled past the session): dropped %d unwritten messages",
            batch.messages,
        )

    # -- rebalance -------------------------------------------------------------------

    async def _on_assigned(self, partitions: frozenset[int]) -> None:
        if not partitions:
            return
        steps = self._steps
        rows = await steps.retrier.retry(
            "loading state",
            lambda: stored_states(self._ch, self.config.group, partitions, self._catalog),
        )
        for partition, key, state in rows:
            steps.states.put(partition, key, state)
        # After the states: a backfill plans its chunks over the visitors held.
        await steps.backfiller.assigned(partitions)
        log.info("assigned partitions %s, restored %d visitors", sorted(partitions), len(rows))

    async def _on_revoked(self, partitions: frozenset[int]) -> None:
        steps = self._steps
        if not self._crashed:
            await self.flush(revoking=partitions)
        lost = steps.committer.forget(partitions)
        if lost:
            # The last commit for them failed. If another member owns them already, no
            # retry can succeed; it resumes from the previous commit and skips, per
            # visitor, what the states we wrote say was applied.
            log.warning("giving up uncommitted offsets %s of revoked partitions", lost)
        steps.states.drop(partitions)
        # Everything held is revoked together (the eager protocol), so from here the
        # member starts anew: a new assignment loads its states and offsets.
        self._fenced_out = False
        steps.backfiller.revoked(partitions)
        for partition in partitions:
            with contextlib.suppress(KeyError):
                metrics.PROCESSOR_LAG.remove(str(partition))
        metrics.PROCESSOR_VISITORS.set(len(steps.states))
        log.info("revoked partitions %s", sorted(partitions))

    # -- what others read ------------------------------------------------------------

    def problems(self) -> dict[str, str]:
        """Parts this processor depends on that are failing now, with the reason:
        "clickhouse" while a read or write is being retried, "log" once a log call has
        failed for `log_unready_after_seconds`."""
        return self._steps.retrier.problems()

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

    def backfilled(self, project: str, funnel_id: str) -> frozenset[int]:
        """The held partitions where the funnel's live state is built (for a definition)."""
        done = self._steps.backfiller.done
        return frozenset(p for p, funnels in done.items() if (project, funnel_id) in funnels)

    def export_funnel_stages(self, states: Iterable[VisitorState] | None = None) -> None:
        """Recompute the funnel stage gauges from the held states (before a scrape).
        `states`: every member's of this process, when several share the gauges."""
        held = self._steps.states.all() if states is None else states
        self._steps.funnel_metrics.export_stages(held)

    def held_states(self) -> Iterator[VisitorState]:
        """The visitor states of the partitions this processor holds."""
        return self._steps.states.all()

    def held_visitors(self) -> int:
        return len(self._steps.states)

    def assignment(self) -> frozenset[int]:
        """The partitions this processor holds now."""
        return self._consumer.assignment() if self._consumer is not None else frozenset()


@contextlib.asynccontextmanager
async def _logged(batch: Batch) -> AsyncIterator[None]:
    """Log lines made inside carry the batch's id (funnelstream/logs.py); the lines about
    a written batch also name the offsets it ends at (`_log_written`)."""
    with batch_context(batch.id):
        yield


def _log_written(batch: Batch, writes: Writes) -> None:
    """What an operator wants to hear of a written batch: its dead letters and re-folds
    (the rest is in the metrics); the offsets it ends at, to find its messages."""
    ends = ", ".join(f"p{p}<{o}" for p, o in sorted(batch.next_offsets.items()))
    if batch.dead_letters:
        reasons: dict[str, int] = {}
        for row in batch.dead_letters:
            reasons[str(row[2])] = reasons.get(str(row[2]), 0) + 1
        log.warning(
            "batch of %d messages (%s) sent %d to the dead letters: %s",
            batch.messages,
            ends,
            len(batch.dead_letters),
            ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())),
        )
    refolded = len(writes.refolds.replaced) if writes.refolds is not None else 0
    if refolded:
        log.info(
            "batch of %d messages (%s) re-folded %d visitors for late events",
            batch.messages,
            ends,
            refolded,
        )
    log.debug("batch of %d messages written (%s)", batch.messages, ends)
