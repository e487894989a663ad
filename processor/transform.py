"""One event in, rows out: dedupe → sessionize → advance every funnel. No I/O.

`apply_event` is the whole per-event logic of the processor; the pipeline around it only
decodes, batches, writes and commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from funnel.compiled import DEFAULT_SESSION_GAP_MS, compile_funnel, funnel_routes
from funnel.fold import OTHER, FunnelProgress, Transition, uuid_order
from processor.rows import (
    SESSION_CONTEXT_FIELDS,
    SESSION_ENTRY_FIELDS,
    Row,
    as_uuid,
)
from processor.sessionize import Session, forget_closed, new_session_id, place
from processor.state import VisitorState
from schemas.events import Event
from schemas.funnels import FunnelDefinition
from schemas.properties import flatten


@dataclass(frozen=True, slots=True)
class Timing:
    # The one session gap: sessions, and the funnels counted by session (compile_funnel).
    session_gap_ms: int = DEFAULT_SESSION_GAP_MS
    lateness_ms: int = 10 * 60 * 1000


@dataclass(slots=True)
class Outputs:
    """Rows of one batch. Session and funnel-state rows are kept as references and built
    at write time: only the last change of a batch is written, so building a row per
    event would be wasted work."""

    events: list[Row] = field(default_factory=list)
    # funnel_transitions rows in three groups, written in this order (`add_transition`).
    transitions: list[Row] = field(default_factory=list)
    retractions: list[Row] = field(default_factory=list)
    late_transitions: dict[tuple[str, str, str, int], Row] = field(default_factory=dict)
    duplicates: int = 0
    # Events older than the lateness behind their visitor's newest: stored, and their
    # visitors (project, visitor) re-folded from the stored events after the write.
    too_late: int = 0
    refold: set[tuple[str, str]] = field(default_factory=set)
    # Funnels whose rule raised on an event: quarantined by the pipeline, with the error.
    failed: dict[tuple[str, str], tuple[FunnelDefinition, Exception]] = field(default_factory=dict)
    # Rows of visitor_identities: a visitor now counting for a user (or no longer).
    identities: list[Row] = field(default_factory=list)
    # (project, user) whose `count_by: "user"` progress must be rebuilt after the write:
    # their visitors sit on any partition, so it is folded from the stored events
    # (processor/user_funnels.py), not kept here.
    users: set[tuple[str, str]] = field(default_factory=set)
    # session id → (project, visitor, session, offset of its last change, deleted)
    pending_sessions: dict[str, tuple[str, str, Session, int, bool]] = field(default_factory=dict)
    # (project, funnel, visitor) → (progress, offset of its last change, processed at)
    pending_funnel_states: dict[tuple[str, str, str], tuple[FunnelProgress, int, int]] = field(
        default_factory=dict
    )
    # Keys (project, funnel, visitor, step) retracted or corrected in this batch.
    _corrected: set[tuple[str, str, str, int]] = field(default_factory=set)

    def add_transition(self, row: Row) -> None:
        """Place a funnel_transitions row so the batch's insert leaves each key's last row
        right. The table keeps the last row per (funnel, visitor, step) in insert order,
        also within one insert, so rows written as they happened go first; then the
        retractions; the row a key ends on after a correction goes last (one per key: rows
        superseded within the batch were never written, nobody saw them)."""
        kind = row[-1]
        key = (row[0], row[1], row[2], row[3])
        if kind == "retracted":
            self.retractions.append(row)
            self.late_transitions.pop(key, None)
            self._corrected.add(key)
        elif kind == "corrected" or key in self._corrected:
            self.late_transitions[key] = row
            self._corrected.add(key)
        else:
            self.transitions.append(row)

    def transition_inserts(self) -> list[list[Row]]:
        """The three groups, in the order they are written (one insert keeps it)."""
        return [self.transitions, self.retractions, list(self.late_transitions.values())]

    @property
    def sessions(self) -> dict[str, Row]:
        return {sid: session_row(*p) for sid, p in self.pending_sessions.items()}

    @property
    def funnel_states(self) -> dict[tuple[str, str, str], Row]:
        return {k: funnel_state_row(*k, *p) for k, p in self.pending_funnel_states.items()}

    def clear(self) -> None:
        self.events.clear()
        self.pending_sessions.clear()
        self.pending_funnel_states.clear()
        self.transitions.clear()
        self.retractions.clear()
        self.late_transitions.clear()
        self._corrected.clear()
        self.identities.clear()
        self.users.clear()
        self.refold.clear()
        self.failed.clear()
        self.duplicates = 0
        self.too_late = 0

    def row_count(self) -> int:
        return (
            len(self.events)
            + len(self.pending_sessions)
            + len(self.pending_funnel_states)
            + len(self.transitions)
            + len(self.retractions)
            + len(self.late_transitions)
            + len(self.identities)
        )


def transition_row(
    project: str,
    funnel_id: str,
    visitor: str,
    t: Transition,
    processed_at_ms: int,
) -> Row:
    """A funnel_transitions row; its kind: reached (as it happened), or retracted /
    corrected when a late event changed what in-order arrival makes."""
    return (
        project,
        funnel_id,
        visitor,
        t.step,
        t.reached_at_ms,
        t.chain_started_at_ms,
        as_uuid(t.event_id),
        processed_at_ms,
        t.kind,
    )


def session_row(project: str, visitor: str, s: Session, offset: int, deleted: bool) -> Row:
    return (
        project,
        visitor,
        s.session_id,
        s.started_at_ms,
        s.ended_at_ms,
        s.event_count,
        s.entry.get("url", ""),
        s.entry.get("referrer", ""),
        s.entry.get("utm_source", ""),
        s.entry.get("utm_medium", ""),
        s.entry.get("utm_campaign", ""),
        s.entry.get("device", ""),
        s.entry.get("browser", ""),
        s.entry.get("os", ""),
        s.entry.get("country", ""),
        offset,
        1 if deleted else 0,
    )


def funnel_state_row(
    project: str,
    funnel_id: str,
    visitor: str,
    progress: FunnelProgress,
    offset: int,
    processed_at_ms: int,
) -> Row:
    slots = progress.slots
    return (
        project,
        funnel_id,
        visitor,
        progress.level,
        # A step not reached: the epoch, as the table has always held it.
        [s[0] if s else 0 for s in slots],
        [s[1] if s else 0 for s in slots],
        progress.attempts,
        processed_at_ms,
        offset,
    )


def event_row(event: Event, props: dict[str, str], partition: int, offset: int) -> Row:
    return (
        event.project_id,
        as_uuid(event.event_id),
        event.event,
        event.visitor_id,
        event.user_id,
        event.session_id,
        event.timestamp_ms,
        event.received_at_ms,
        props,
        event.context,
        partition,
        offset,
    )


def apply_event(
    state: VisitorState,
    event: Event,
    *,
    partition: int,
    offset: int,
    funnels: list[FunnelDefinition],
    timing: Timing,
    processed_at_ms: int,
    out: Outputs,
    duplicate: bool = False,
) -> None:
    """Fold one event into the visitor's state and append the resulting rows to `out`.
    `duplicate`: the event is a resend of one accepted before (processor/dedupe.py)."""
    if offset <= state.applied_offset:
        return  # absorbed before a crash; its rows are already written
    state.applied_offset = offset
    if duplicate:
        out.duplicates += 1
        return

    props = flatten(event.properties)
    out.events.append(event_row(event, props, partition, offset))
    if event.user_id:
        _identify(state, event, funnels, offset, processed_at_ms, out)
    if state.identity is not None:
        _touch_user(state, event, props, funnels, timing, out)

    horizon = state.newest_ms - timing.lateness_ms
    if state.newest_ms and event.timestamp_ms < horizon:
        # Too late to place from the state alone: stored, then its visitor is re-folded
        # from every stored event after the batch's write (processor/refold.py).
        out.too_late += 1
        out.refold.add((event.project_id, event.visitor_id))
        return
    # Newer than every event before it (ties may still sort before one of them).
    newest = event.timestamp_ms > state.newest_ms
    state.newest_ms = max(state.newest_ms, event.timestamp_ms)
    horizon = state.newest_ms - timing.lateness_ms

    _sessionize(state, event, props, offset, timing, out)
    identified = state.identity is not None
    tie = uuid_order(event.event_id)  # once for every funnel's entries
    for funnel in funnel_routes(funnels, timing.session_gap_ms).of(event.event):
        # An identified visitor's user funnels are rebuilt per user after the write.
        if identified and funnel.count_by == "user":
            continue
        try:
            _advance(
                state,
                event,
                props,
                funnel,
                offset,
                horizon,
                newest,
                tie,
                timing,
                processed_at_ms,
                out,
            )
        except Exception as exc:
            # A definition validation let through that fails on real data: it is taken
            # out (quarantined, with this error) and no other funnel or event stops.
            out.failed[(funnel.project, funnel.id)] = (funnel, exc)


def _identify(
    state: VisitorState,
    event: Event,
    funnels: list[FunnelDefinition],
    offset: int,
    processed_at_ms: int,
    out: Outputs,
) -> None:
    """A user id on the visitor's newest event: from now on (and for its past events) the
    visitor counts for that user. Every event goes through here, also those too late for
    live state: the report maps visitors to users over all stored events."""
    previous = state.identify(event.timestamp_ms, event.user_id)
    if previous is None:
        return
    at = event.timestamp_ms
    project, visitor = event.project_id, event.visitor_id
    out.identities.append((project, event.user_id, visitor, at, 0))
    out.users.add((project, event.user_id))
    if previous:
        out.identities.append((project, previous, visitor, at, 1))
        out.users.add((project, previous))
        return
    # First identify: the visitor no longer counts on its own in user funnels.
    for funnel in funnels:
        if funnel.count_by == "user":
            forget_visitor(state, funnel, offset, processed_at_ms, out)


def forget_visitor(
    state: VisitorState, funnel: FunnelDefinition, offset: int, processed_at_ms: int, out: Outputs
) -> bool:
    """Drop the visitor's own progress in a user funnel (it counts in its user's row now)
    and empty its row; True if it had one."""
    if state.funnels.pop(funnel.id, None) is None:
        return False
    out.pending_funnel_states[(state.project_id, funnel.id, state.visitor_id)] = (
        FunnelProgress(steps=len(funnel.steps)),
        offset,
        processed_at_ms,
    )
    return True


def _touch_user(
    state: VisitorState,
    event: Event,
    props: dict[str, str],
    funnels: list[FunnelDefinition],
    timing: Timing,
    out: Outputs,
) -> None:
    """An identified visitor's event that concerns a user funnel: rebuild its user."""
    assert state.identity is not None
    for funnel in funnels:
        if funnel.count_by == "user" and compile_funnel(funnel, timing.session_gap_ms).entries(
            event.event, props, event.timestamp_ms, event.event_id
        ):
            out.users.add((event.project_id, state.identity[1]))
            return


def _sessionize(
    state: VisitorState,
    event: Event,
    props: dict[str, str],
    offset: int,
    timing: Timing,
    out: Outputs,
) -> None:
    def entry() -> dict[str, str]:
        fields = {k: props.get(k, "") for k in SESSION_ENTRY_FIELDS}
        fields.update({k: event.context.get(k, "") for k in SESSION_CONTEXT_FIELDS})
        return fields

    changes = place(
        state.sessions,
        timestamp_ms=event.timestamp_ms,
        entry=entry,
        new_id=lambda: new_session_id(event.project_id, event.visitor_id, event.event_id),
        gap_ms=timing.session_gap_ms,
    )
    for change in changes:
        out.pending_sessions[change.session.session_id] = (
            event.project_id,
            event.visitor_id,
            change.session,
            offset,
            change.deleted,
        )
    forget_closed(state.sessions, state.newest_ms, timing.session_gap_ms, timing.lateness_ms)


def _advance(
    state: VisitorState,
    event: Event,
    props: dict[str, str],
    funnel: FunnelDefinition,
    offset: int,
    horizon: int,
    newest: bool,
    tie: int,
    timing: Timing,
    processed_at_ms: int,
    out: Outputs,
) -> None:
    live = compile_funnel(funnel, timing.session_gap_ms)
    entries = live.entries(event.event, props, event.timestamp_ms, event.event_id, tie)
    if not entries:
        return
    progress = state.funnels.get(funnel.id)
    if progress is None:
        progress = state.funnels[funnel.id] = FunnelProgress(steps=len(funnel.steps))
    before = list(progress.slots) if entries[0].step == OTHER else None
    value = live.held_value(props)
    if value is not None and not newest and progress.by_value:
        # Attempts split by a held value keep no single checkpoint to re-sort from: an
        # event that may land between earlier ones re-folds the visitor from the stored
        # events instead (processor/refold.py).
        out.refold.add((event.project_id, event.visitor_id))
    transitions = progress.add(entries, live.rule, horizon, value)
    for t in transitions:
        out.add_transition(
            transition_row(event.project_id, funnel.id, event.visitor_id, t, processed_at_ms)
        )
    if before is not None and before == progress.slots:
        # Strict order reads every event; one matching nothing changes the slots only
        # when it lands late between two steps: otherwise no state row to write.
        return
    out.pending_funnel_states[(event.project_id, funnel.id, event.visitor_id)] = (
        progress,
        offset,
        processed_at_ms,
    )
