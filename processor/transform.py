"""One event in, rows out: dedupe → sessionize → advance every funnel. No I/O.

`apply_event` is the whole per-event logic of the processor; the pipeline around it only
decodes, batches, writes and commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processor.funnel_stage import FunnelProgress, entries_for
from processor.rows import (
    SESSION_CONTEXT_FIELDS,
    SESSION_ENTRY_FIELDS,
    Row,
    as_uuid,
    ms_to_datetime,
)
from processor.sessionize import forget_closed, new_session_id, place
from processor.state import VisitorState
from processor.step_match import matching_steps
from schemas.events import Event
from schemas.funnels import FunnelDefinition
from schemas.properties import flatten


@dataclass(frozen=True, slots=True)
class Timing:
    session_gap_ms: int = 30 * 60 * 1000
    lateness_ms: int = 10 * 60 * 1000


@dataclass(slots=True)
class Outputs:
    events: list[Row] = field(default_factory=list)
    sessions: dict[str, Row] = field(default_factory=dict)
    funnel_states: dict[tuple[str, str, str], Row] = field(default_factory=dict)
    transitions: list[Row] = field(default_factory=list)
    duplicates: int = 0
    too_late: int = 0

    def clear(self) -> None:
        self.events.clear()
        self.sessions.clear()
        self.funnel_states.clear()
        self.transitions.clear()
        self.duplicates = 0
        self.too_late = 0

    def row_count(self) -> int:
        return (
            len(self.events) + len(self.sessions) + len(self.funnel_states) + len(self.transitions)
        )


def event_row(event: Event, props: dict[str, str], partition: int, offset: int) -> Row:
    return (
        event.project_id,
        as_uuid(event.event_id),
        event.event,
        event.visitor_id,
        event.user_id,
        event.session_id,
        ms_to_datetime(event.timestamp_ms),
        ms_to_datetime(event.received_at_ms),
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
) -> None:
    """Fold one event into the visitor's state and append the resulting rows to `out`."""
    if offset <= state.applied_offset:
        return  # absorbed before a crash; its rows are already written
    state.applied_offset = offset
    if not state.remember(event.event_id):
        out.duplicates += 1
        return

    props = flatten(event.properties)
    out.events.append(event_row(event, props, partition, offset))

    horizon = state.newest_ms - timing.lateness_ms
    if state.newest_ms and event.timestamp_ms < horizon:
        # Stored for retroactive SQL reports; too late to place in live state exactly.
        out.too_late += 1
        return
    state.newest_ms = max(state.newest_ms, event.timestamp_ms)
    horizon = state.newest_ms - timing.lateness_ms

    _sessionize(state, event, props, offset, timing, out)
    for funnel in funnels:
        # Funnels the stage machine cannot hold yet are served from raw events only.
        if funnel.live_unsupported() is None:
            _advance(state, event, props, funnel, offset, horizon, processed_at_ms, out)


def _sessionize(
    state: VisitorState,
    event: Event,
    props: dict[str, str],
    offset: int,
    timing: Timing,
    out: Outputs,
) -> None:
    entry = {k: props.get(k, "") for k in SESSION_ENTRY_FIELDS}
    entry.update({k: event.context.get(k, "") for k in SESSION_CONTEXT_FIELDS})
    changes = place(
        state.sessions,
        timestamp_ms=event.timestamp_ms,
        entry=entry,
        new_id=new_session_id(event.project_id, event.visitor_id, event.event_id),
        gap_ms=timing.session_gap_ms,
    )
    for change in changes:
        s = change.session
        out.sessions[s.session_id] = (
            event.project_id,
            event.visitor_id,
            s.session_id,
            ms_to_datetime(s.started_at_ms),
            ms_to_datetime(s.ended_at_ms),
            s.event_count,
            s.entry.get("url", ""),
            s.entry.get("referrer", ""),
            s.entry.get("utm_source", ""),
            s.entry.get("utm_medium", ""),
            s.entry.get("utm_campaign", ""),
            s.entry.get("device", ""),
            s.entry.get("browser", ""),
            s.entry.get("os", ""),
            offset,
            1 if change.deleted else 0,
        )
    forget_closed(state.sessions, state.newest_ms, timing.session_gap_ms, timing.lateness_ms)


def _advance(
    state: VisitorState,
    event: Event,
    props: dict[str, str],
    funnel: FunnelDefinition,
    offset: int,
    horizon: int,
    processed_at_ms: int,
    out: Outputs,
) -> None:
    matched = matching_steps(funnel.steps, event.event, props)
    if not matched:
        return
    progress = state.funnels.get(funnel.id)
    if progress is None:
        progress = state.funnels[funnel.id] = FunnelProgress(steps=len(funnel.steps))
    entries = entries_for(event.timestamp_ms, event.event_id, matched)
    transitions = progress.add(entries, funnel.window_seconds * 1000, horizon)
    for t in transitions:
        out.transitions.append(
            (
                event.project_id,
                funnel.id,
                event.visitor_id,
                t.step,
                ms_to_datetime(t.reached_at_ms),
                ms_to_datetime(t.chain_started_at_ms),
                as_uuid(t.event_id),
                ms_to_datetime(processed_at_ms),
            )
        )
    started = [ms_to_datetime(s[0]) if s else ms_to_datetime(0) for s in progress.slots]
    reached = [ms_to_datetime(s[1]) if s else ms_to_datetime(0) for s in progress.slots]
    out.funnel_states[(event.project_id, funnel.id, event.visitor_id)] = (
        event.project_id,
        funnel.id,
        event.visitor_id,
        progress.level,
        started,
        reached,
        ms_to_datetime(processed_at_ms),
        offset,
    )
