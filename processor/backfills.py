"""Backfill I/O: live state for funnels defined after their events were stored.

Which funnels need one: per held partition, the definition hash whose state was built
(a marker in `funnel_backfills`, loaded on assignment). A funnel saved, or changed, has no
marker with its current hash; its visitors' progress is rebuilt from the stored events
(processor/backfill.py, pure) and written in the sink's backfill order, marker last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from funnelstream.clickhouse import ClickHouse
from processor.backfill import (
    apply_rebuilt,
    definition_hash,
    events_sql,
    group_rows,
    rebuild_progress,
)
from processor.catalog import FunnelCatalog
from processor.funnel_stage import FunnelProgress
from processor.restore import stored_markers
from processor.retry import Retrier
from processor.rows import ms_to_datetime
from processor.sink import BACKFILL_ORDER, Sink, Writes
from processor.state import HeldStates, VisitorState
from processor.transform import Outputs, Timing, forget_visitor, transition_row
from schemas.funnels import FunnelDefinition

log = logging.getLogger(__name__)


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
    ) -> None:
        self._ch = clickhouse
        self._catalog = catalog
        self._states = states
        self._sink = sink
        self._retrier = retrier
        self._group = group
        self._timing = timing
        # Per partition: (project, funnel) → definition hash whose live state is built.
        self.done: dict[int, dict[tuple[str, str], str]] = {}
        self._due = True
        self._catalog_version = -1

    async def assigned(self, partitions: frozenset[int]) -> None:
        markers = await self._retrier.retry(
            "loading backfill markers",
            lambda: stored_markers(self._ch, self._group, partitions),
        )
        for partition in partitions:
            self.done[partition] = {}
        for partition, project, funnel_id, digest in markers:
            self.done[partition][(project, funnel_id)] = digest
        self._due = True

    def revoked(self, partitions: frozenset[int]) -> None:
        for partition in partitions:
            self.done.pop(partition, None)

    def wanted(self) -> bool:
        return self._due or self._catalog.version != self._catalog_version

    async def run(self, held: frozenset[int], flush: Callable[[], Awaitable[None]]) -> None:
        """Build live state for every funnel without a marker of its current definition."""
        self._catalog_version = self._catalog.version
        self._due = False
        todo = []
        for funnel in self._catalog.all():
            digest = definition_hash(funnel)
            key = (funnel.project, funnel.id)
            parts = [p for p in sorted(held) if self.done.get(p, {}).get(key) != digest]
            if parts:
                todo.append((funnel, digest, parts))
        if not todo:
            return
        # Every absorbed event must be in the events table before it is read back.
        await flush()
        for funnel, digest, parts in todo:
            await self._one(funnel, digest, parts)

    async def _one(self, funnel: FunnelDefinition, digest: str, parts: list[int]) -> None:
        started = time.monotonic()
        rows = await self._retrier.retry(
            "backfill read",
            lambda: self._ch.query_rows(
                events_sql(funnel),
                {"project": funnel.project, "events": funnel.event_names(), "partitions": parts},
            ),
        )
        grouped = group_rows(rows)
        now_ms = int(time.time() * 1000)
        out = Outputs()
        dirty: dict[str, tuple[int, VisitorState]] = {}
        users: set[tuple[str, str]] = set()
        for partition in parts:
            for key, state in self._states.of(partition).items():
                if state.project_id != funnel.project:
                    continue
                if funnel.count_by == "user" and state.identity is not None:
                    # Counted in its user's row, rebuilt by the sink from every visitor.
                    users.add((funnel.project, state.identity[1]))
                    if forget_visitor(state, funnel, state.applied_offset, now_ms, out):
                        dirty[key] = (partition, state)
                    continue
                events = grouped.get((partition, state.visitor_id))
                if events is None and funnel.id not in state.funnels:
                    continue
                progress, transitions = rebuild_progress(
                    funnel, events or [], state.newest_ms, self._timing.lateness_ms
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
                dirty[key] = (partition, state)
        markers = [
            (self._group, p, funnel.project, funnel.id, digest, ms_to_datetime(now_ms))
            for p in parts
        ]
        writes = Writes(out, dirty, users=users, fresh=None, only=funnel, markers=markers)
        await self._retrier.retry(
            "backfill write", lambda: self._sink.write(writes, BACKFILL_ORDER)
        )
        for p in parts:
            self.done.setdefault(p, {})[(funnel.project, funnel.id)] = digest
        log.info(
            "backfilled funnel %s/%s over partitions %s: %d visitors in %.2fs",
            funnel.project,
            funnel.id,
            parts,
            len(dirty),
            time.monotonic() - started,
        )
