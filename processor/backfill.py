"""Live state for a funnel defined after its events were stored. Pure part + SQL.

When a funnel is saved (or its definition changes), each processor rebuilds, for the
partitions it holds, every visitor's progress in that funnel from the events table: the
same entries the live path would have made, folded in timestamp order. Events written to
the table are exactly the events the visitor states have absorbed (the batch is flushed
first), so afterwards the live machine continues as if the funnel had always existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from funnel.compiled import DEFAULT_SESSION_GAP_MS, compile_funnel
from funnel.fold import Entry, FunnelProgress, Transition
from processor.state import VisitorState
from schemas.funnels import FunnelDefinition


def definition_hash(funnel: FunnelDefinition) -> str:
    # No serializer warnings: a stored definition that fails at run time is hashed too.
    return hashlib.sha256(funnel.model_dump_json(warnings=False).encode()).hexdigest()[:16]


def state_key(funnel: FunnelDefinition, version: int | None) -> str:
    """What a funnel's live state (backfill markers, per-visitor progress rows) is keyed
    by: its definition and its version. A new version is rebuilt by its backfill even with
    the definition of an earlier one: events stored while the funnel was archived were not
    folded into it. Version 1 (and a config funnel, without versions) keeps the plain hash,
    the key the previous release wrote, so an upgrade rebuilds nothing."""
    digest = definition_hash(funnel)
    return digest if version is None or version <= 1 else f"{digest}@v{version}"


def rebuild_progress(
    funnel: FunnelDefinition,
    events: Iterable[tuple[str, str, int, dict[str, str]]],
    newest_ms: int,
    lateness_ms: int,
    *,
    session_gap_ms: int = DEFAULT_SESSION_GAP_MS,
) -> tuple[FunnelProgress | None, list[Transition]]:
    """One visitor's progress from (event_id, event, timestamp ms, properties) rows;
    `session_gap_ms`: the processor's session gap (funnels counted by session)."""
    live = compile_funnel(funnel, session_gap_ms)
    entries: list[tuple[list[Entry], str | None]] = []
    for event_id, name, ts, props in events:
        event_entries = live.entries(name, props, ts, event_id)
        if event_entries:
            entries.append((event_entries, live.held_value(props)))
    if not entries:
        return None, []
    entries.sort(key=lambda pair: pair[0][0].sort_key())
    progress = FunnelProgress(steps=len(funnel.steps))
    transitions: list[Transition] = []
    horizon = newest_ms - lateness_ms
    for event_entries, value in entries:
        # Entries come in time order, so none older than this one is still to come: the
        # horizon may not pass it (a held value could be retired before its next entry).
        now = min(horizon, event_entries[0].timestamp_ms)
        transitions.extend(progress.add(event_entries, live.rule, now, value))
    return progress, transitions


def group_rows(
    rows: Iterable[tuple[Any, ...]],
) -> dict[tuple[int, str], list[tuple[str, str, int, dict[str, str]]]]:
    """Rows of the backfill's event read (processor/backfills.py) by (partition, visitor)."""
    out: dict[tuple[int, str], list[tuple[str, str, int, dict[str, str]]]] = {}
    for partition, visitor, event_id, name, ts, props in rows:
        out.setdefault((int(partition), str(visitor)), []).append(
            (str(event_id), str(name), int(ts), dict(props))
        )
    return out


def apply_rebuilt(
    state: VisitorState, funnel: FunnelDefinition, progress: FunnelProgress | None
) -> bool:
    """Replace the visitor's progress; True if the visitor has a stage row to write."""
    had = funnel.id in state.funnels
    if progress is None:
        state.funnels.pop(funnel.id, None)
        return had
    state.funnels[funnel.id] = progress
    return True
