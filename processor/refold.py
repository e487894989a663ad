"""A visitor re-folded from its stored events, and the corrections that makes. Pure part + SQL.

An event may arrive any time after it happened (a retry queue, an import, a client that
was offline for days). Within `lateness` of the visitor's newest event the live state
places it exactly (pending entries are re-sorted, funnel/fold.py). An older one
cannot be placed from the state alone: the checkpoint has already forgotten the entries
it would land between. Such an event is stored like any other, and then its visitor is
re-folded: every stored event of the visitor, in timestamp order, through the same
`apply_event` a fresh processor would run. The result replaces the visitor's live state,
and what it changed is written as corrections:

* sessions: the re-fold's sessions are written; stored sessions it no longer has are
  written again as deleted (a late event can merge two sessions, or start a new one);
* funnel state: the re-folded row of every funnel the visitor has a row in;
* transitions: per (funnel, step) the table keeps the last transition the visitor made.
  Where the re-fold ends on another one, the stored row is retracted (`kind = 'retracted'`,
  written first) and the new one written after it (`kind = 'corrected'`); a step the
  re-fold never reaches is only retracted. Consumers' rules: docs/funnels.md.

Only the late event's visitor is read, once per batch however many of its events were late.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from funnel.fold import FunnelProgress, Transition, uuid_order
from processor.rows import Row
from processor.sessionize import Session
from processor.state import VisitorState
from processor.transform import (
    Outputs,
    Timing,
    funnel_state_row,
    session_row,
    transition_row,
)
from processor.visitor_fold import VisitorEvents, fold_visitor
from schemas.events import Event
from schemas.funnels import FunnelDefinition

# Every stored event of the given visitors (FINAL: a replayed batch's identical rows once).
VISITOR_EVENTS_SQL = """
SELECT visitor_id, toString(event_id), event, toUnixTimestamp64Milli(timestamp), properties,
       context, user_id, client_session_id
FROM events FINAL
WHERE project_id = {project:String} AND visitor_id IN {visitors:Array(String)}
"""

# The sessions the table holds for them now.
VISITOR_SESSIONS_SQL = """
SELECT visitor_id, session_id
FROM sessions FINAL
WHERE project_id = {project:String} AND visitor_id IN {visitors:Array(String)}
  AND is_deleted = 0
"""

# The last transition per (funnel, step) the table holds for them, retracted ones included
# (a retracted step that the re-fold reaches again is written again).
VISITOR_TRANSITIONS_SQL = """
SELECT funnel_id, visitor_id, step, toUnixTimestamp64Milli(reached_at),
       toUnixTimestamp64Milli(chain_started_at), toString(event_id), kind
FROM funnel_transitions FINAL
WHERE project_id = {project:String} AND funnel_id IN {funnels:Array(String)}
  AND visitor_id IN {visitors:Array(String)}
"""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    event: str
    timestamp_ms: int
    properties: dict[str, str]
    context: dict[str, str]
    user_id: str
    session_id: str


# (step, reached at, chain started at, event id) of a transition, as the table keys it.
TransitionKey = tuple[int, int, int, str]


@dataclass(slots=True)
class Refolded:
    """One visitor after a re-fold: its new state and every row it made (not yet diffed
    against what is stored)."""

    state: VisitorState
    outputs: Outputs
    # funnel id → step → the last transition the fold made for it.
    last_transitions: dict[str, dict[int, TransitionKey]] = field(default_factory=dict)


def group_events(rows: Iterable[tuple[Any, ...]]) -> dict[str, list[StoredEvent]]:
    """Rows of VISITOR_EVENTS_SQL by visitor."""
    out: dict[str, list[StoredEvent]] = {}
    for visitor, event_id, name, ts, props, context, user, session in rows:
        out.setdefault(str(visitor), []).append(
            StoredEvent(
                str(event_id),
                str(name),
                int(ts),
                dict(props),
                dict(context),
                str(user),
                str(session),
            )
        )
    return out


def refold(
    old: VisitorState,
    events: list[StoredEvent],
    funnels: list[FunnelDefinition],
    timing: Timing,
    processed_at_ms: int,
) -> Refolded:
    """The visitor's state and rows as if `events` had arrived in timestamp order.

    Identity is the old state's: it was kept exact on arrival (the newest user id wins
    whatever the order, processor/state.py). The re-fold's own identity rows and touched
    users are dropped: the late event itself already wrote what they would."""
    ordered = sorted(events, key=lambda e: (e.timestamp_ms, uuid_order(e.event_id)))
    columns = VisitorEvents(old.project_id, old.visitor_id, 0)
    for offset, e in enumerate(ordered):
        columns.append(
            offset,
            Event(
                old.project_id,
                e.event_id,
                e.event,
                old.visitor_id,
                e.timestamp_ms,
                e.timestamp_ms,
                session_id=e.session_id,
                user_id=e.user_id,
                properties=e.properties,
                context=e.context,
            ),
        )
    out = Outputs()
    state = fold_visitor(
        VisitorState(old.project_id, old.visitor_id),
        columns,
        funnels=funnels,
        timing=timing,
        processed_at_ms=processed_at_ms,
        out=out,
    ).state
    state.applied_offset = old.applied_offset
    state.identity = old.identity
    failed = {funnel.id for funnel, _ in out.failed.values()}
    for funnel_id in failed:
        # Its rule raised on a stored event: the caller quarantines it; until then its
        # live progress and rows stay as they were, nothing is retracted for it.
        state.funnels.pop(funnel_id, None)
        if funnel_id in old.funnels:
            state.funnels[funnel_id] = old.funnels[funnel_id]
    if old.identity is not None:
        for funnel in funnels:
            if funnel.count_by == "user":
                state.funnels.pop(funnel.id, None)
    # The table as the fold's own inserts leave it (ties in timestamp can make even an
    # ordered feed re-sort, and so correct itself).
    last: dict[str, dict[int, TransitionKey]] = {}
    for rows in out.transition_inserts():
        for row in rows:
            _, funnel_id, _, step, reached, started, event_id, _, kind = row
            if funnel_id in failed:
                continue
            steps = last.setdefault(funnel_id, {})
            if kind == "retracted":
                steps.pop(int(step), None)
            else:
                steps[int(step)] = (int(step), int(reached), int(started), str(event_id))
    return Refolded(state, out, last)


@dataclass(slots=True)
class Corrections:
    """The rows that bring the stored tables in line with re-folded visitors. Retractions
    are written before the rest: a retraction and its replacement share the key of
    funnel_transitions, and the later row wins there."""

    sessions: list[Row] = field(default_factory=list)
    funnel_states: list[Row] = field(default_factory=list)
    retractions: list[Row] = field(default_factory=list)
    transitions: list[Row] = field(default_factory=list)

    def extend(self, other: Corrections) -> None:
        self.sessions += other.sessions
        self.funnel_states += other.funnel_states
        self.retractions += other.retractions
        self.transitions += other.transitions


def corrections(
    old: VisitorState,
    new: Refolded,
    stored_sessions: set[str],
    stored_transitions: dict[tuple[str, int], tuple[TransitionKey, str]],
    funnels: list[FunnelDefinition],
    version: int,
    processed_at_ms: int,
) -> Corrections:
    """Rows for one re-folded visitor. `stored_transitions`: (funnel, step) →
    (transition, kind) as the table holds them; `version`: the offset the rows carry (the
    visitor's last absorbed offset, at least that of any row written for it before)."""
    project, visitor = old.project_id, old.visitor_id
    out = Corrections()
    sessions = {
        sid: pending[2]
        for sid, pending in new.outputs.pending_sessions.items()
        if not pending[4]  # in timestamp order no session is ever merged away, but be safe
    }
    for session in sessions.values():
        out.sessions.append(session_row(project, visitor, session, version, False))
    for sid in sorted(stored_sessions - set(sessions)):
        gone = _deleted_session(sid)
        out.sessions.append(session_row(project, visitor, gone, version, True))

    user_ids = {f.id for f in funnels if f.count_by == "user"} if old.identity else set()
    # Funnels whose rule raised during the re-fold keep their rows (see `refold`); so do
    # funnels not passed (a backfill has not reached this visitor yet: its chunk writes).
    untouched = user_ids | {funnel.id for funnel, _ in new.outputs.failed.values()}
    folded = {funnel.id for funnel in funnels}
    for funnel in funnels:
        if funnel.id in untouched:
            continue
        progress = new.state.funnels.get(funnel.id)
        if progress is None and funnel.id not in old.funnels:
            continue
        if progress is None:
            progress = FunnelProgress(steps=len(funnel.steps))
        out.funnel_states.append(
            funnel_state_row(project, funnel.id, visitor, progress, version, processed_at_ms)
        )

    wanted = {
        (funnel_id, step): t
        for funnel_id, steps in new.last_transitions.items()
        if funnel_id not in untouched
        for step, t in steps.items()
    }
    for key in sorted(set(stored_transitions) | set(wanted)):
        funnel_id, step = key
        if funnel_id in untouched or funnel_id not in folded:
            continue
        want = wanted.get(key)
        have, kind = stored_transitions.get(key, (None, "retracted"))
        live = None if kind == "retracted" else have
        if want == live:
            continue
        if live is not None:
            out.retractions.append(
                _transition(project, funnel_id, visitor, live, processed_at_ms, "retracted")
            )
        if want is not None:
            out.transitions.append(
                _transition(project, funnel_id, visitor, want, processed_at_ms, "corrected")
            )
    return out


def _transition(
    project: str, funnel_id: str, visitor: str, t: TransitionKey, processed_at_ms: int, kind: str
) -> Row:
    step, reached, started, event_id = t
    moved = Transition(step, reached, started, event_id, kind)
    return transition_row(project, funnel_id, visitor, moved, processed_at_ms)


def _deleted_session(session_id: str) -> Session:
    # Only the key matters in a deletion row (ReplacingMergeTree with is_deleted).
    return Session(session_id, 0, 0, 0, {})


def stored_transitions_by_visitor(
    rows: Iterable[tuple[Any, ...]],
) -> dict[str, dict[tuple[str, int], tuple[TransitionKey, str]]]:
    """Rows of VISITOR_TRANSITIONS_SQL by visitor."""
    out: dict[str, dict[tuple[str, int], tuple[TransitionKey, str]]] = {}
    for funnel_id, visitor, step, reached, started, event_id, kind in rows:
        out.setdefault(str(visitor), {})[(str(funnel_id), int(step))] = (
            (int(step), int(reached), int(started), str(event_id)),
            str(kind),
        )
    return out
