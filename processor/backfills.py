"""Backfill I/O: live state for funnels defined after their events were stored.

Which funnels need one: per held partition, the definition hash whose state was built
(a marker in `funnel_backfills`, loaded on assignment). A funnel saved, or changed, has no
marker with its current hash; its visitors' progress is rebuilt from the stored events
(processor/backfill.py, pure) and written in the sink's backfill order.

It runs in chunks, so it scales with history and never holds the processor up for long:

* Per partition, the project's held visitors in key order are cut into chunks of
  `chunk_visitors`. A chunk reads only its visitors' events of the funnel (filtered by
  event name where the rule allows), folds them, and is written before the next is read.
  The processor's loop runs one chunk per turn, so live events keep flowing in between,
  and a stop is seen between chunks.
* Until its chunk is done, a visitor's live events skip that funnel (`funnels_for`): they
  are stored, and the chunk folds them with the rest, flushed before it reads. So live
  progress never starts from a partial history, and the result equals a single-shot
  backfill. Visitors created after the backfill began have no earlier history: they are
  folded live from their first event.
* After each chunk its last visitor key is written (`funnel_backfill_progress`); the
  partition's marker goes with its last chunk. A restart resumes after the last written
  key: only the unfinished chunks are redone.
* Only the visitors a chunk touched (events of the funnel, or progress to clear) get a
  row, and it holds their progress in this funnel only (`visitor_funnel_progress`), not
  their whole states, which hold every funnel of the project: with many funnels saved,
  saving one more costs what it costs with one. On assignment these rows are loaded over
  the states (processor/restore.py), keyed by definition hash: a changed definition's
  rows are ignored and rebuilt by its backfill.
* Progress is exported per funnel as `funnelstream_backfill_progress` (0..1) and logged.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from funnel.fold import FunnelProgress
from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from processor.backfill import apply_rebuilt, group_rows, rebuild_progress, state_key
from processor.catalog import FunnelCatalog
from processor.restore import stored_markers, stored_progress
from processor.retry import Retrier
from processor.rows import Row, ms_to_datetime
from processor.sink import BACKFILL_ORDER, Sink, Writes
from processor.state import HeldStates, VisitorState
from processor.transform import Outputs, Timing, forget_visitor, transition_row
from schemas.funnels import FunnelDefinition

log = logging.getLogger(__name__)

FunnelKey = tuple[str, str]  # (project, funnel id)
# On markers written since backfills store per-funnel progress rows: a release that does
# not load those rows sees another hash, and redoes the backfill instead of trusting it.
MARKER_SUFFIX = "+rows"


def chunk_events_sql(funnel: FunnelDefinition) -> str:
    """The stored events of one partition's chunk of visitors that the funnel reads."""
    where = [
        "project_id = {project:String}",
        "log_partition = {partition:UInt32}",
        "visitor_id IN {visitors:Array(String)}",
    ]
    # Strict order reads every event of the visitor (an event matching no step breaks a
    # chain); so do sessions (any event may end or continue one).
    if funnel.order != "strict" and funnel.count_by != "session":
        where.append("event IN {events:Array(String)}")
    return (
        "SELECT log_partition, visitor_id, toString(event_id), event,\n"
        "       toUnixTimestamp64Milli(timestamp), properties\n"
        "FROM events FINAL\n"
        "WHERE " + "\n  AND ".join(where) + "\n"
    )


@dataclass(slots=True)
class _Job:
    """One funnel's backfill over the held partitions that lack its marker."""

    funnel: FunnelDefinition
    digest: str
    # Per partition: the project's visitor keys in order (shared between jobs, never
    # changed) and the index of the first one not rebuilt yet.
    keys: dict[int, list[str]]
    next: dict[int, int]
    total: int
    rebuilt: int = 0
    started: float = field(default_factory=time.monotonic)
    logged_tenth: int = 0

    @property
    def key(self) -> FunnelKey:
        return (self.funnel.project, self.funnel.id)

    def waits_for(self, partition: int, visitor_key: str) -> bool:
        """Whether this visitor's progress in the funnel is still to be rebuilt."""
        keys = self.keys.get(partition)
        if keys is None:
            return False
        i = bisect_left(keys, visitor_key, self.next[partition])
        return i < len(keys) and keys[i] == visitor_key

    def left(self) -> int | None:
        """A partition with visitors still to rebuild, if any."""
        return next((p for p in sorted(self.keys) if self.next[p] < len(self.keys[p])), None)

    def progress(self) -> float:
        return 1.0 if self.total == 0 else self.rebuilt / self.total


class _FunnelFailed(Exception):
    """The funnel's rule raised while a chunk was folded."""

    def __init__(self, funnel: FunnelDefinition, error: Exception) -> None:
        super().__init__(str(error))
        self.funnel = funnel
        self.error = error


class Backfiller:
    def __init__(
        self,
        clickhouse: ClickHouse,
        catalog: FunnelCatalog,
        states: HeldStates,
        sink: Sink,
        retrier: Retrier,
        group: str,
        timing: Timing,
        chunk_visitors: int,
    ) -> None:
        self._ch = clickhouse
        self._catalog = catalog
        self._states = states
        self._sink = sink
        self._retrier = retrier
        self._group = group
        self._timing = timing
        self._chunk = max(1, chunk_visitors)
        # Per held partition: (project, funnel) → definition hash whose live state is built.
        self.done: dict[int, dict[FunnelKey, str]] = {}
        # Per held partition: (project, funnel) → (definition hash, last visitor key
        # rebuilt) of a backfill under way.
        self._resume: dict[int, dict[FunnelKey, tuple[str, str]]] = {}
        self._jobs: list[_Job] = []
        self._jobs_by_project: dict[str, list[_Job]] = {}
        self._due = True
        self._planned_version = -1

    # -- rebalance -------------------------------------------------------------------

    async def assigned(self, partitions: frozenset[int]) -> None:
        """Load what was done for these partitions; call after their states are loaded."""
        markers = await self._retrier.retry(
            "loading backfill markers",
            lambda: stored_markers(self._ch, self._group, partitions),
        )
        progress = await self._retrier.retry(
            "loading backfill progress",
            lambda: stored_progress(self._ch, self._group, partitions),
        )
        for partition in partitions:
            self.done[partition] = {}
            self._resume[partition] = {}
        for partition, project, funnel_id, digest in markers:
            self.done[partition][(project, funnel_id)] = digest.removesuffix(MARKER_SUFFIX)
        for partition, project, funnel_id, digest, after in progress:
            self._resume[partition][(project, funnel_id)] = (digest, after)
        # Planned now, over the visitors restored: not lazily at the first apply, which
        # creates the visitors of its events first; they have no earlier history, but a
        # plan made then would hold their live folds back until their chunk is written.
        self._plan()

    def revoked(self, partitions: frozenset[int]) -> None:
        for partition in partitions:
            self.done.pop(partition, None)
            self._resume.pop(partition, None)
        self._due = True

    # -- what the apply step asks ----------------------------------------------------

    def funnels_for(self, partition: int, project: str, visitor_key: str) -> list[FunnelDefinition]:
        """The funnels an event of this visitor advances live: the project's, less those
        whose backfill has not reached the visitor yet (their chunk folds the event)."""
        self._plan_if_stale()
        funnels = self._catalog.for_project(project)
        jobs = self._jobs_by_project.get(project)
        if not jobs:
            return funnels
        waiting = {j.funnel.id for j in jobs if j.waits_for(partition, visitor_key)}
        return [f for f in funnels if f.id not in waiting] if waiting else funnels

    # -- the loop's turn -------------------------------------------------------------

    def busy(self) -> bool:
        """Whether a backfill has chunks left (the loop then polls without waiting)."""
        self._plan_if_stale()
        return bool(self._jobs)

    async def run_chunk(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Rebuild and write the next chunk of the first unfinished backfill."""
        self._plan_if_stale()
        if not self._jobs:
            return
        finished = [j for j in self._jobs if j.left() is None]
        if finished:
            # All at once: a fresh start with many funnels and no visitors is one write.
            await self._finish(finished)
            return
        job = self._jobs[0]
        partition = job.left()
        assert partition is not None
        start = job.next[partition]
        keys = job.keys[partition][start : start + self._chunk]
        # Every event absorbed so far must be in the events table before it is read back.
        await flush()
        if partition not in self.done:
            return  # revoked during the flush: its next owner backfills it
        try:
            writes, touched = await self._rebuild(job, partition, keys)
        except _FunnelFailed as failed:
            # A rule validation let through that raises on stored events: the funnel is
            # quarantined (out of the catalog, so out of the plan) and every other funnel
            # and live event goes on. The chunk wrote nothing.
            self._catalog.quarantine(job.funnel, failed.error, "in its backfill")
            return
        last = start + len(keys) == len(job.keys[partition])
        now = ms_to_datetime(int(time.time() * 1000))
        if last:
            writes.markers.append(self._marker(job, partition, now))
        writes.progress.append((self._group, partition, *job.key, job.digest, keys[-1], now))
        await self._retrier.retry(
            "backfill write", lambda: self._sink.write(writes, BACKFILL_ORDER)
        )
        if partition not in self.done:
            return  # revoked meanwhile: the next owner resumes from what was written
        job.next[partition] = start + len(keys)
        self._resume.setdefault(partition, {})[job.key] = (job.digest, keys[-1])
        if last:
            self.done.setdefault(partition, {})[job.key] = job.digest
        job.rebuilt += len(keys)
        self._report(job, touched)

    # -- planning --------------------------------------------------------------------

    def _plan_if_stale(self) -> None:
        if self._due or self._catalog.version != self._planned_version:
            self._plan()

    def _plan(self) -> None:
        """The backfills to run: every funnel lacking a marker of its current definition
        on a held partition, each resuming after its last written visitor key."""
        self._planned_version = self._catalog.version
        self._due = False
        previous = {(j.key, j.digest): j for j in self._jobs}
        held = sorted(self.done)
        # Sorted once per (partition, project) and shared by every job of the plan.
        keys_of: dict[tuple[int, str], list[str]] = {}
        jobs = []
        for funnel in self._catalog.all():
            digest = state_key(funnel, self._catalog.version_of(funnel.project, funnel.id))
            key = (funnel.project, funnel.id)
            parts = [p for p in held if self.done[p].get(key) != digest]
            if not parts:
                continue
            job = _Job(funnel, digest, {}, {}, 0)
            old = previous.get((key, digest))
            if old is not None:
                job.rebuilt, job.started, job.logged_tenth = (
                    old.rebuilt,
                    old.started,
                    old.logged_tenth,
                )
            for p in parts:
                if (p, funnel.project) not in keys_of:
                    prefix = funnel.project + "\x1f"
                    keys_of[(p, funnel.project)] = sorted(
                        k for k in self._states.of(p) if k.startswith(prefix)
                    )
                keys = keys_of[(p, funnel.project)]
                resume = self._resume.get(p, {}).get(key)
                after = resume[1] if resume is not None and resume[0] == digest else None
                job.keys[p] = keys
                job.next[p] = bisect_right(keys, after) if after is not None else 0
                job.total += len(keys) - job.next[p]
            job.total += job.rebuilt
            jobs.append(job)
            if old is None:
                log.info(
                    "backfill of funnel %s/%s: %d visitors over partitions %s",
                    funnel.project,
                    funnel.id,
                    job.total,
                    parts,
                )
        self._jobs = jobs
        self._jobs_by_project = {}
        for job in jobs:
            self._jobs_by_project.setdefault(job.funnel.project, []).append(job)
            metrics.BACKFILL_PROGRESS.labels(*job.key).set(job.progress())

    # -- one chunk -------------------------------------------------------------------

    async def _rebuild(self, job: _Job, partition: int, keys: list[str]) -> tuple[Writes, int]:
        """The rows of one chunk: its visitors' progress in the funnel, rebuilt."""
        funnel = job.funnel
        held = self._states.of(partition)
        states = [s for s in (held.get(k) for k in keys) if s is not None]
        read = [s.visitor_id for s in states if not _user_counted(funnel, s)]
        params = {
            "project": funnel.project,
            "partition": partition,
            "visitors": read,
            "events": funnel.event_names(),
        }
        rows = (
            await self._retrier.retry(
                "backfill read", lambda: self._ch.query_rows(chunk_events_sql(funnel), params)
            )
            if read
            else []
        )
        grouped = group_rows(rows)
        now_ms = int(time.time() * 1000)
        out = Outputs()
        touched: list[tuple[str, VisitorState]] = []
        users: set[tuple[str, str]] = set()
        for key, state in zip(keys, (held.get(k) for k in keys), strict=True):
            if state is None:
                continue
            if _user_counted(funnel, state):
                assert state.identity is not None
                # Counted in its user's row, rebuilt by the sink from every visitor.
                users.add((funnel.project, state.identity[1]))
                if forget_visitor(state, funnel, state.applied_offset, now_ms, out):
                    touched.append((key, state))
                continue
            events = grouped.get((partition, state.visitor_id))
            if events is None and funnel.id not in state.funnels:
                continue
            try:
                progress, transitions = rebuild_progress(
                    funnel,
                    events or [],
                    state.newest_ms,
                    self._timing.lateness_ms,
                    session_gap_ms=self._timing.session_gap_ms,
                )
            except Exception as exc:
                raise _FunnelFailed(funnel, exc) from exc
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
            touched.append((key, state))
        # The funnel's progress of each visitor touched, not the whole states: these
        # hold every funnel of the project (0009_visitor_funnel_progress.sql).
        at = ms_to_datetime(now_ms)
        rows = [
            (
                self._group,
                partition,
                key,
                funnel.id,
                job.digest,
                _progress_json(state.funnels.get(funnel.id)),
                state.applied_offset,
                at,
            )
            for key, state in touched
        ]
        writes = Writes(out, {}, users=users, fresh=None, only=funnel, funnel_progress=rows)
        return writes, len(touched)

    def _marker(self, job: _Job, partition: int, now: datetime) -> Row:
        return (self._group, partition, *job.key, job.digest + MARKER_SUFFIX, now)

    async def _finish(self, jobs: list[_Job]) -> None:
        """Write the markers still missing of backfills with nothing left to rebuild (a
        partition without visitors of the project has no chunk to carry one)."""
        now = ms_to_datetime(int(time.time() * 1000))
        todo = [
            (job, p)
            for job in jobs
            for p in sorted(job.keys)
            if self.done.get(p, {}).get(job.key) != job.digest
        ]
        if todo:
            writes = Writes(Outputs(), {}, markers=[self._marker(j, p, now) for j, p in todo])
            await self._retrier.retry(
                "backfill write", lambda: self._sink.write(writes, BACKFILL_ORDER)
            )
        for job, p in todo:
            if p in self.done:
                self.done[p][job.key] = job.digest
        for job in jobs:
            self._complete(job)

    def _report(self, job: _Job, touched: int) -> None:
        metrics.BACKFILL_PROGRESS.labels(*job.key).set(job.progress())
        tenth = int(job.progress() * 10)
        log.debug("backfill of %s/%s: chunk of %d touched visitors", *job.key, touched)
        if tenth > job.logged_tenth and tenth < 10:
            job.logged_tenth = tenth
            log.info(
                "backfill of funnel %s/%s: %d%% (%d of %d visitors)",
                *job.key,
                tenth * 10,
                job.rebuilt,
                job.total,
            )

    def _complete(self, job: _Job) -> None:
        if job not in self._jobs:
            return
        self._jobs.remove(job)
        self._jobs_by_project[job.funnel.project].remove(job)
        metrics.BACKFILL_PROGRESS.labels(*job.key).set(1.0)
        log.info(
            "backfilled funnel %s/%s over partitions %s: %d visitors in %.2fs",
            *job.key,
            sorted(job.keys),
            job.rebuilt,
            time.monotonic() - job.started,
        )


def _progress_json(progress: FunnelProgress | None) -> str:
    return orjson.dumps(progress.to_json()).decode() if progress is not None else ""


def _user_counted(funnel: FunnelDefinition, state: VisitorState) -> bool:
    """An identified visitor counts in its user's row of a `count_by: "user"` funnel."""
    return funnel.count_by == "user" and state.identity is not None
