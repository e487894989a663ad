"""State rebuilt from what ClickHouse stores, in the middle of a write (I/O around pure
folds): users of `count_by: "user"` funnels (processor/user_funnels.py) and visitors that
received an event too late for their live state (processor/refold.py).

Both read rows the same write stored just before, so the sink calls them at their place
in its order (processor/sink.py); each returns rows and leaves the writing to the sink.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from processor.catalog import FunnelCatalog, FunnelsFor
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
from processor.rows import Row
from processor.state import VisitorState, visitor_key
from processor.transform import Timing
from processor.user_funnels import (
    VISITORS_SQL,
    group_by_user,
    user_events_sql,
    user_funnels,
    user_rows,
)
from schemas.funnels import FunnelDefinition


@dataclass(slots=True)
class UserRows:
    funnel_states: list[Row] = field(default_factory=list)
    transitions: list[Row] = field(default_factory=list)


class UserRebuilder:
    def __init__(self, clickhouse: ClickHouse, catalog: FunnelCatalog, timing: Timing) -> None:
        self._ch = clickhouse
        self._catalog = catalog
        self._timing = timing

    async def rebuild(
        self,
        users: set[tuple[str, str]],
        fresh: set[str] | None,
        only: FunnelDefinition | None = None,
    ) -> UserRows:
        """Funnel-state and transition rows of these users' `count_by: "user"` funnels
        (or of `only`), rebuilt from the stored events of the visitors counting for them.
        `fresh`: event ids whose transitions to write (None: all, for a backfill)."""
        by_project: dict[str, list[str]] = {}
        for project, user in sorted(users):
            by_project.setdefault(project, []).append(user)
        out = UserRows()
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
            failed: dict[tuple[str, str], tuple[FunnelDefinition, Exception]] = {}
            states, transitions = user_rows(
                project,
                funnels,
                group_by_user(names, members, rows),
                int(version),
                self._timing.lateness_ms,
                fresh,
                int(time.time() * 1000),
                session_gap_ms=self._timing.session_gap_ms,
                failed=failed,
            )
            for funnel, error in failed.values():
                self._catalog.quarantine(funnel, error, "rebuilding users")
            out.funnel_states += states
            out.transitions += transitions
            metrics.PROCESSOR_USERS_REBUILT.inc(len(names))
            metrics.PROCESSOR_USER_REBUILD_SECONDS.observe(time.monotonic() - started)
        return out


@dataclass(slots=True)
class Refolds:
    """A batch's re-folds: the corrections to write, and each visitor's new state."""

    fixes: Corrections = field(default_factory=Corrections)
    replaced: dict[str, tuple[int, VisitorState]] = field(default_factory=dict)


class LateRefolder:
    def __init__(
        self,
        clickhouse: ClickHouse,
        catalog: FunnelCatalog,
        timing: Timing,
        funnels_for: FunnelsFor | None = None,
    ) -> None:
        self._ch = clickhouse
        self._catalog = catalog
        self._timing = timing
        # The funnels a visitor's events advance: the live fold's own choice (a funnel
        # whose backfill has not reached the visitor is left to its chunk).
        self._funnels_for = funnels_for or (lambda _p, project, _k: catalog.for_project(project))

    async def refold(
        self,
        visitors: set[tuple[str, str]],
        dirty: dict[str, tuple[int, VisitorState]],
    ) -> Refolds:
        """Re-fold these (project, visitor)s from their stored events (refold.py); their
        current states are in `dirty`. Returns the corrections and the new states."""
        now_ms = int(time.time() * 1000)
        by_project: dict[str, list[str]] = {}
        for project, visitor in sorted(visitors):
            by_project.setdefault(project, []).append(visitor)
        out = Refolds()
        for project, names in by_project.items():
            funnels = self._catalog.for_project(project)
            params = {"project": project, "visitors": names, "funnels": [f.id for f in funnels]}
            events = group_events(await self._ch.query_rows(VISITOR_EVENTS_SQL, params))
            sessions: dict[str, set[str]] = {}
            for visitor, session_id in await self._ch.query_rows(VISITOR_SESSIONS_SQL, params):
                sessions.setdefault(str(visitor), set()).add(str(session_id))
            stored = stored_transitions_by_visitor(
                await self._ch.query_rows(VISITOR_TRANSITIONS_SQL, params) if funnels else []
            )
            for visitor in names:
                key = visitor_key(project, visitor)
                partition, old = dirty[key]
                own = self._funnels_for(partition, project, key)
                new = refold(old, events.get(visitor, []), own, self._timing, now_ms)
                for funnel, error in new.outputs.failed.values():
                    self._catalog.quarantine(funnel, error, "re-folding a visitor")
                out.fixes.extend(
                    corrections(
                        old,
                        new,
                        sessions.get(visitor, set()),
                        stored.get(visitor, {}),
                        own,
                        old.applied_offset,
                        now_ms,
                    )
                )
                out.replaced[key] = (partition, new.state)
        return out
