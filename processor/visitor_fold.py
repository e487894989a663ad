"""The fold's contract: one visitor's events, as columns, and its state in; the new state
and the rows they make out.

Both callers hand a visitor's events over in one call: the apply step (a polled batch,
grouped by visitor, in log order: processor/apply.py) and the late-event re-fold (every
stored event of the visitor, in timestamp order: processor/refold.py). The events travel
as columns, one list per field, so a faster fold (integer arrays, a compiled extension)
can replace the body of `fold_visitor` without touching either caller. Today the body
folds them one by one through `apply_event` (processor/transform.py), which holds the
rules: dedupe and replay skips, sessionizing, every funnel's stage machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from schemas.events import Event
from schemas.funnels import FunnelDefinition


@dataclass(slots=True)
class VisitorEvents:
    """One visitor's events (all of one project and one log partition), as columns of
    equal length, in the order they are folded."""

    project_id: str
    visitor_id: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    received_ms: list[int] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[dict[str, str]] = field(default_factory=list)
    # Resends of an event accepted before (processor/dedupe.py): counted, not folded.
    duplicates: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def append(self, offset: int, event: Event, duplicate: bool = False) -> None:
        self.append_row(
            offset,
            event.event_id,
            event.event,
            event.timestamp_ms,
            event.received_at_ms,
            event.user_id,
            event.session_id,
            event.properties,
            event.context,
            duplicate,
        )

    def append_row(
        self,
        offset: int,
        event_id: str,
        name: str,
        timestamp_ms: int,
        received_ms: int,
        user_id: str,
        session_id: str,
        properties: dict[str, Any],
        context: dict[str, str],
        duplicate: bool = False,
    ) -> None:
        self.offsets.append(offset)
        self.event_ids.append(event_id)
        self.names.append(name)
        self.timestamps_ms.append(timestamp_ms)
        self.received_ms.append(received_ms)
        self.user_ids.append(user_id)
        self.session_ids.append(session_id)
        self.properties.append(properties)
        self.contexts.append(context)
        self.duplicates.append(duplicate)

    def event(self, i: int) -> Event:
        return Event(
            self.project_id,
            self.event_ids[i],
            self.names[i],
            self.visitor_id,
            self.timestamps_ms[i],
            self.received_ms[i],
            session_id=self.session_ids[i],
            user_id=self.user_ids[i],
            properties=self.properties[i],
            context=self.contexts[i],
        )


@dataclass(slots=True)
class FoldResult:
    """The visitor's state after the fold (use this one: a fold may return a new object)
    and which of the events it absorbed (not skipped as already applied before a crash)."""

    state: VisitorState
    absorbed: list[int]


def fold_visitor(
    state: VisitorState,
    events: VisitorEvents,
    *,
    funnels: list[FunnelDefinition],
    timing: Timing,
    processed_at_ms: int,
    out: Outputs,
) -> FoldResult:
    """Fold one visitor's events into its state; the rows and transitions they make are
    appended to `out` (the batch's rows)."""
    absorbed = []
    for i in range(len(events)):
        before = state.applied_offset
        apply_event(
            state,
            events.event(i),
            partition=events.partition,
            offset=events.offsets[i],
            funnels=funnels,
            timing=timing,
            processed_at_ms=processed_at_ms,
            out=out,
            duplicate=events.duplicates[i],
        )
        if state.applied_offset != before:
            absorbed.append(i)
    return FoldResult(state, absorbed)
