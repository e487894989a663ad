"""Sink: every write of the processor, in one order declared once.

A batch (processor/batch.py) and a backfill chunk (processor/backfills.py) are written by
walking an order: a tuple of steps, each naming what it writes and why it goes there. The
rule behind both orders: visitor state goes after every row it produced, so a state row
on disk implies its rows are on disk (processor/state.py), and the offset commit (or the
backfill's marker) comes after the whole write. A failed write is retried as a whole by
the caller; every step is idempotent (ReplacingMergeTree keys, rebuilds from what is
stored), so a retry or a replay after a crash writes the same rows again.

A write can also fail ambiguously: the insert landed, the answer was lost. Read with
FINAL the second copy would not count, but not every read is FINAL (reports read `events`
as stored, the live stream reads transitions as written). So every insert of a batch
carries a deduplication token (`batch_token`): the same log span and events give the
same token, on a retry and on a replay after a restart, and the engine drops a block it
has already taken under that token (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.log import Log, LogProducer, LogRecord
from processor.batch import Batch
from processor.rebuild import LateRefolder, Refolds, UserRebuilder, UserRows
from processor.rows import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    FUNNEL_STATE_COLUMNS,
    IDENTITY_COLUMNS,
    SESSION_COLUMNS,
    STATE_COLUMNS,
    TRANSITION_COLUMNS,
    Row,
)
from processor.state import HeldStates, VisitorState
from processor.transform import Outputs
from schemas.funnels import FunnelDefinition

BACKFILL_COLUMNS = (
    "consumer_group",
    "log_partition",
    "project_id",
    "funnel_id",
    "definition_hash",
    "done_at",
)
FUNNEL_PROGRESS_COLUMNS = (
    "consumer_group",
    "log_partition",
    "visitor_key",
    "funnel_id",
    "definition_hash",
    "progress",
    "applied_offset",
    "written_at",
)
PROGRESS_COLUMNS = (
    "consumer_group",
    "log_partition",
    "project_id",
    "funnel_id",
    "definition_hash",
    "resume_after",
    "written_at",
)


@dataclass(slots=True)
class Writes:
    """What one write stores: a batch's rows, or a backfill chunk's."""

    outputs: Outputs
    # Visitor key → (partition, state) of every visitor whose state is written.
    dirty: dict[str, tuple[int, VisitorState]]
    # (project, user) to rebuild; `fresh`: event ids whose transitions to write (None:
    # all); `only`: rebuild this funnel only (a backfill), else every user funnel.
    users: set[tuple[str, str]] = field(default_factory=set)
    fresh: set[str] | None = None
    only: FunnelDefinition | None = None
    dead_letters: list[Row] = field(default_factory=list)
    dead_letter_records: list[LogRecord] = field(default_factory=list)
    # visitor_funnel_progress rows: one funnel's progress per visitor (a backfill).
    funnel_progress: list[Row] = field(default_factory=list)
    # funnel_backfill_progress rows: how far a backfill got (its last visitor key).
    progress: list[Row] = field(default_factory=list)
    # funnel_backfills rows: a backfill done for a partition.
    markers: list[Row] = field(default_factory=list)
    # The late-event re-folds, worked out by the first attempt of the write: a retry
    # writes the same corrections again (same rows, same write time, so a stream reader
    # sees each once) instead of re-folding from states the first attempt replaced.
    refolds: Refolds | None = None
    # The inserts' deduplication token base (`batch_token`); "" writes without one.
    token: str = ""

    @classmethod
    def of_batch(cls, batch: Batch, group: str) -> Writes:
        out = batch.outputs
        return cls(
            outputs=out,
            dirty=batch.dirty,
            users=out.users,
            fresh={str(row[1]) for row in out.events} if out.users else set(),
            dead_letters=batch.dead_letters,
            dead_letter_records=batch.dead_letter_records,
            token=batch_token(group, batch),
        )


_PAYLOAD = DEAD_LETTER_COLUMNS.index("payload")


def batch_token(group: str, batch: Batch) -> str:
    """What names a batch's writes, rebuilt alike after a restart: the consumer group, the
    log span per partition, and the batch's first and last event ids (random UUIDs, so a
    log started over from offset 0 against the same ClickHouse never reuses an old
    batch's token; two ids instead of a digest of all: a digest of 20,000 ids cost ~35 ms).
    A batch of dead letters only has no event ids: their first and last payloads name it
    instead (not `recorded_at`, which a replay after a restart would not rebuild)."""
    span = ",".join(
        f"{p}:{batch.first_offsets.get(p, end - 1)}-{end}"
        for p, end in sorted(batch.next_offsets.items())
    )
    events = batch.outputs.events
    ends = f"{events[0][1]}..{events[-1][1]}" if events else ""
    dead = batch.dead_letters
    dead_ends = f"{dead[0][_PAYLOAD]}..{dead[-1][_PAYLOAD]}" if dead else ""
    # Hashed to a fixed length: the span grows with the partitions a batch reads.
    named = hashlib.blake2b(
        f"{span}/{len(events)}:{ends}/{len(dead)}:{dead_ends}".encode(), digest_size=16
    )
    return f"{group}/{named.hexdigest()}"


@dataclass(slots=True)
class _Pass:
    """One pass through an order: what its reading steps found, for the steps after.
    Made fresh for every attempt, so a retried write never adds rows twice."""

    writes: Writes
    users: UserRows = field(default_factory=UserRows)
    # Inserts made so far: the n-th insert of a pass gets token "<base>/<n>". The steps
    # insert in one fixed order, so every attempt numbers them alike.
    inserts: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    target: str
    why: str
    write: Callable[[Sink, _Pass], Awaitable[None]]


class Sink:
    def __init__(
        self,
        clickhouse: ClickHouse,
        log: Log,
        group: str,
        dead_letter_topic: str,
        states: HeldStates,
        users: UserRebuilder,
        refolder: LateRefolder,
    ) -> None:
        self._ch = clickhouse
        self._log = log
        self._group = group
        self._dead_letter_topic_name = dead_letter_topic
        self._states = states
        self._users = users
        self._refolder = refolder
        self._dead_letters: LogProducer | None = None

    async def start(self) -> None:
        """Open the dead-letter topic's producer (raises `LogUnavailable`; call again)."""
        if self._dead_letters is None:
            await self._log.ensure_topic(self._dead_letter_topic_name, 1)
            producer = self._log.producer(self._dead_letter_topic_name)
            await producer.start()
            self._dead_letters = producer

    async def stop(self) -> None:
        if self._dead_letters is not None:
            await self._dead_letters.stop()
            self._dead_letters = None

    async def write(self, writes: Writes, order: tuple[Step, ...]) -> None:
        done = _Pass(writes)
        for step in order:
            await step.write(self, done)

    async def _insert(
        self, done: _Pass, table: str, rows: Sequence[Row], columns: Sequence[str]
    ) -> None:
        """Every insert of a pass, numbered (empty ones too, so the numbering never
        depends on what an attempt found to write)."""
        done.inserts += 1
        base = done.writes.token
        token = f"{base}/{done.inserts}" if base else None
        await self._ch.insert(table, rows, columns, token)

    # -- the steps, in the order BATCH_ORDER names them ------------------------------

    async def _events(self, done: _Pass) -> None:
        await self._insert(done, "events", done.writes.outputs.events, EVENT_COLUMNS)

    async def _sessions(self, done: _Pass) -> None:
        rows = list(done.writes.outputs.sessions.values())
        await self._insert(done, "sessions", rows, SESSION_COLUMNS)

    async def _identities(self, done: _Pass) -> None:
        await self._insert(
            done, "visitor_identities", done.writes.outputs.identities, IDENTITY_COLUMNS
        )

    async def _rebuild_users(self, done: _Pass) -> None:
        w = done.writes
        done.users = await self._users.rebuild(w.users, w.fresh, w.only)

    async def _funnel_states(self, done: _Pass) -> None:
        rows = list(done.writes.outputs.funnel_states.values()) + done.users.funnel_states
        await self._insert(done, "funnel_state", rows, FUNNEL_STATE_COLUMNS)

    async def _transitions(self, done: _Pass) -> None:
        # One insert: the table keeps each key's last row in insert order, also within an
        # insert ("the very last row from the most recent insert"), and its materialized
        # view gets every row, retractions included. The users' rows are as they happened.
        happened, retractions, corrections = done.writes.outputs.transition_inserts()
        rows = [*happened, *done.users.transitions, *retractions, *corrections]
        await self._insert(done, "funnel_transitions", rows, TRANSITION_COLUMNS)

    async def _refolds(self, done: _Pass) -> None:
        w = done.writes
        if not w.outputs.refold:
            return
        started = time.monotonic()
        first = w.refolds is None
        if w.refolds is None:
            w.refolds = await self._refolder.refold(w.outputs.refold, w.dirty)
        found = w.refolds
        fixes = found.fixes
        await self._insert(done, "sessions", fixes.sessions, SESSION_COLUMNS)
        await self._insert(done, "funnel_state", fixes.funnel_states, FUNNEL_STATE_COLUMNS)
        # Retractions first: a correction that follows shares their key in
        # funnel_transitions, and the later row of one insert is the one kept.
        await self._insert(
            done, "funnel_transitions", fixes.retractions + fixes.transitions, TRANSITION_COLUMNS
        )
        # The re-folded states replace the live ones, written below and held from now on.
        for key, (partition, state) in found.replaced.items():
            w.dirty[key] = (partition, state)
            self._states.replace(partition, key, state)
        if not first:
            return  # counted by the attempt that re-folded
        metrics.PROCESSOR_REFOLDED_VISITORS.inc(len(found.replaced))
        metrics.PROCESSOR_CORRECTIONS.labels("retracted").inc(len(fixes.retractions))
        metrics.PROCESSOR_CORRECTIONS.labels("corrected").inc(len(fixes.transitions))
        metrics.PROCESSOR_REFOLD_SECONDS.observe(time.monotonic() - started)

    async def _dead_letter_table(self, done: _Pass) -> None:
        await self._insert(done, "dead_letters", done.writes.dead_letters, DEAD_LETTER_COLUMNS)

    async def _dead_letter_topic(self, done: _Pass) -> None:
        records = done.writes.dead_letter_records
        if records and self._dead_letters is not None:
            await self._dead_letters.append(records)

    async def _visitor_states(self, done: _Pass) -> None:
        # The JSON bytes as they are: the driver writes bytes to a String column unchanged.
        rows = [
            (self._group, partition, key, state.dumps(), state.applied_offset)
            for key, (partition, state) in done.writes.dirty.items()
        ]
        await self._insert(done, "processor_state", rows, STATE_COLUMNS)

    async def _funnel_progress(self, done: _Pass) -> None:
        rows = done.writes.funnel_progress
        await self._insert(done, "visitor_funnel_progress", rows, FUNNEL_PROGRESS_COLUMNS)

    async def _progress(self, done: _Pass) -> None:
        rows = done.writes.progress
        await self._insert(done, "funnel_backfill_progress", rows, PROGRESS_COLUMNS)

    async def _markers(self, done: _Pass) -> None:
        await self._insert(done, "funnel_backfills", done.writes.markers, BACKFILL_COLUMNS)


# A batch: the log's messages turned into rows.
BATCH_ORDER: tuple[Step, ...] = (
    Step("events", "first: the user rebuild and the re-folds below read them", Sink._events),
    Step("sessions", "derived from the events; read by the re-folds", Sink._sessions),
    Step(
        "visitor_identities",
        "before the user rebuild, which reads who counts for whom",
        Sink._identities,
    ),
    Step(
        "user rebuild (read)",
        "after the events and identities it folds; its rows join the next two inserts",
        Sink._rebuild_users,
    ),
    Step("funnel_state", "the batch's last change per (funnel, visitor)", Sink._funnel_states),
    Step(
        "funnel_transitions",
        "one insert: as they happened, retractions, after corrections; the table keeps "
        "each key's last row (Outputs.transition_inserts)",
        Sink._transitions,
    ),
    Step(
        "late re-folds and their corrections",
        "after every row above, so the re-fold reads them and its corrections win",
        Sink._refolds,
    ),
    Step("dead_letters", "the batch's undecodable messages, with why", Sink._dead_letter_table),
    Step(
        "dead-letter topic",
        "at least once, like the table: a replay after a crash may repeat a record",
        Sink._dead_letter_topic,
    ),
    Step(
        "processor_state",
        "last: a visitor state on disk implies every row it produced is (state.py)",
        Sink._visitor_states,
    ),
)

# A backfill chunk: one funnel's live state rebuilt from stored events.
BACKFILL_ORDER: tuple[Step, ...] = (
    Step(
        "user rebuild (read)",
        "the chunk's users, for this funnel only; its rows join the next two inserts",
        Sink._rebuild_users,
    ),
    Step("funnel_state", "the rebuilt progress of every visitor touched", Sink._funnel_states),
    Step("funnel_transitions", "the transitions the rebuild made", Sink._transitions),
    Step(
        "visitor_funnel_progress",
        "after the rows, as a visitor state would be: this funnel's progress only, of the "
        "visitors the chunk touched, not their whole states (which hold every funnel)",
        Sink._funnel_progress,
    ),
    Step(
        "funnel_backfill_progress",
        "after the chunk's rows and states: a restart resumes after the last key written",
        Sink._progress,
    ),
    Step(
        "funnel_backfills",
        "last, with the partition's last chunk: a crash before it redoes only the chunks "
        "not recorded as done",
        Sink._markers,
    ),
)
