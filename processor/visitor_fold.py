"""The fold's contract: one visitor's events, as columns, and its state in; the new state
and the rows they make out.

Both callers hand a visitor's events over in one call: the apply step (a polled batch,
grouped by visitor, in log order: processor/apply.py) and the late-event re-fold (every
stored event of the visitor, in timestamp order: processor/refold.py). A faster fold
(integer arrays, a compiled extension) can replace the body of `fold_visitor` without
touching either caller, reading the columns `VisitorEvents` exposes. Today the body
folds the decoded events one by one through `apply_event` (processor/transform.py), which
holds the rules: dedupe and replay skips, sessionizing, every funnel's stage machine. So
the events are kept as the decoder made them and the columns are built only when asked:
splitting every event into columns and rebuilding it for `apply_event` cost the fold
about 14%.
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
    """One visitor's events (all of one project and one log partition), in the order they
    are folded, with their log offsets and whether each is a resend."""

    project_id: str
    visitor_id: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Resends of an event accepted before (processor/dedupe.py): counted, not folded.
    duplicates: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def append(self, offset: int, event: Event, duplicate: bool = False) -> None:
        self.offsets.append(offset)
        self.events.append(event)
        self.duplicates.append(duplicate)

    # The columns a columnar fold reads.
    @property
    def event_ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events]

    @property
    def timestamps_ms(self) -> list[int]:
        return [e.timestamp_ms for e in self.events]

    @property
    def received_ms(self) -> list[int]:
        return [e.received_at_ms for e in self.events]

    @property
    def user_ids(self) -> list[str]:
        return [e.user_id for e in self.events]

    @property
    def properties(self) -> list[dict[str, Any]]:
        return [e.properties for e in self.events]


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
    for i, event in enumerate(events.events):
        before = state.applied_offset
        apply_event(
            state,
            event,
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
