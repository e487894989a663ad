"""Live state for funnels counted by user (`count_by: "user"`). Pure part + SQL.

A user's visitors are keyed to any log partition, so no processor sees all of a user's
events, and two processors may hold visitors of one user at once. So a user's progress is
not folded message by message: after a batch is written, the processor rebuilds the
progress of every user the batch touched from what ClickHouse stores, which every
processor can read:

1. the visitors counting for the user now (`visitor_identities`, written by the processor
   that owns each visitor when its newest user id changes), then
2. those visitors' events, deduplicated by event id, folded in timestamp order by the same
   stage machine as a visitor's (processor/backfill.py's `rebuild_progress`).

Visitors that never identified count on their own and are folded live as in any other
funnel (processor/transform.py); the first identify writes an empty row in the visitor's
name, and the user's row takes its events over.

Concurrent rebuilds of one user need no lock. Each processor writes its rows first and
then reads, and versions the row it writes with the time its read began (ClickHouse's
clock, `now64`). The row with the greatest version comes from the read that began last,
and every write that finished before that read is in it; any write that finished later
is followed by its own processor's rebuild, with a greater version. So the newest row
(`FINAL`) always covers every stored event of the user. A replay after a crash touches the
same users again and rebuilds them the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from funnel.compiled import DEFAULT_SESSION_GAP_MS
from funnel.fold import FunnelProgress, Transition
from processor.backfill import rebuild_progress
from processor.rows import Row
from processor.transform import funnel_state_row, transition_row
from schemas.funnels import FunnelDefinition

# One row: the version (the query's start on ClickHouse's clock, `now64` is fixed per
# query) and the (user, visitor) pairs counting now.
VISITORS_SQL = """
SELECT toUnixTimestamp64Micro(now64(6)), groupArray((user_id, visitor_id))
FROM visitor_identities FINAL
WHERE project_id = {project:String} AND user_id IN {users:Array(String)}
"""

_USER_EVENT_COLUMNS = """
SELECT visitor_id, toString(event_id), event, toUnixTimestamp64Milli(timestamp), properties
FROM events
"""


def _select_user_events(*, every_name: bool) -> str:
    """The stored events of the users' visitors; only the funnels' event names unless
    `every_name`."""
    where = ["project_id = {project:String}", "visitor_id IN {visitors:Array(String)}"]
    if not every_name:
        where.append("event IN {events:Array(String)}")
    return _USER_EVENT_COLUMNS + "WHERE " + "\n  AND ".join(where) + "\n"


USER_EVENTS_SQL = _select_user_events(every_name=False)
# Strict order reads every event of the entity (any other event breaks a chain).
ALL_USER_EVENTS_SQL = _select_user_events(every_name=True)

EventRow = tuple[str, str, int, dict[str, str]]


def user_funnels(funnels: Iterable[FunnelDefinition]) -> list[FunnelDefinition]:
    """The funnels whose live state is rebuilt per user."""
    return [f for f in funnels if f.count_by == "user"]


def user_events_sql(funnels: list[FunnelDefinition]) -> tuple[str, list[str]]:
    """One query for every user funnel of a project: (SQL, event names it filters on)."""
    if any(f.order == "strict" for f in funnels):
        return ALL_USER_EVENTS_SQL, []
    names = sorted({name for f in funnels for name in f.event_names()})
    return USER_EVENTS_SQL, names


def group_by_user(
    users: Iterable[str], members: Iterable[tuple[Any, Any]], rows: Iterable[tuple[Any, ...]]
) -> dict[str, list[EventRow]]:
    """Rows of USER_EVENTS_SQL per user of `users` (one without visitors or events gets
    none), from the (user, visitor) pairs of VISITORS_SQL. The events table is read
    without FINAL: a row written twice (a replay) is dropped here."""
    user_of = {str(visitor): str(user) for user, visitor in members}
    out: dict[str, dict[str, EventRow]] = {user: {} for user in users}
    for visitor, event_id, name, ts, props in rows:
        user = user_of.get(str(visitor))
        if user in out:
            out[user][str(event_id)] = (str(event_id), str(name), int(ts), dict(props))
    return {user: list(events.values()) for user, events in out.items()}


def rebuild_user(
    funnel: FunnelDefinition,
    events: list[EventRow],
    lateness_ms: int,
    fresh_event_ids: set[str] | None,
    *,
    session_gap_ms: int = DEFAULT_SESSION_GAP_MS,
) -> tuple[FunnelProgress, list[Transition]]:
    """One user's progress from all its visitors' events, and the transitions caused by
    the events of this batch (`fresh_event_ids`): a transition caused by an earlier event
    was written by the batch that brought it (in the user's or, before identify, the
    visitor's name), so it is not written twice. None: all of them (a backfill)."""
    newest = max((ts for _, _, ts, _ in events), default=0)
    progress, transitions = rebuild_progress(
        funnel, events, newest, lateness_ms, session_gap_ms=session_gap_ms
    )
    shown = progress or FunnelProgress(steps=len(funnel.steps))
    if fresh_event_ids is None:
        return shown, transitions
    return shown, [t for t in transitions if t.event_id in fresh_event_ids]


def user_rows(
    project: str,
    funnels: list[FunnelDefinition],
    per_user: dict[str, list[EventRow]],
    version: int,
    lateness_ms: int,
    fresh_event_ids: set[str] | None,
    now_ms: int,
    *,
    session_gap_ms: int = DEFAULT_SESSION_GAP_MS,
    failed: dict[tuple[str, str], tuple[FunnelDefinition, Exception]] | None = None,
) -> tuple[list[Row], list[Row]]:
    """Funnel-state rows (versioned `version`) and transition rows of every user in
    `per_user` (also those left without events: their row is emptied). A funnel whose
    rule raises gets no rows and goes into `failed` (the caller quarantines it), so the
    other funnels' rows are still written."""
    states: list[Row] = []
    transitions: list[Row] = []
    for funnel in funnels:
        own_states: list[Row] = []
        own_transitions: list[Row] = []
        try:
            for user, events in per_user.items():
                progress, moved = rebuild_user(
                    funnel, events, lateness_ms, fresh_event_ids, session_gap_ms=session_gap_ms
                )
                own_states.append(
                    funnel_state_row(project, funnel.id, user, progress, version, now_ms)
                )
                own_transitions.extend(
                    transition_row(project, funnel.id, user, t, now_ms) for t in moved
                )
        except Exception as exc:
            if failed is None:
                raise
            failed[(funnel.project, funnel.id)] = (funnel, exc)
            continue
        states += own_states
        transitions += own_transitions
    return states, transitions
