"""What a processor reads back when it is assigned partitions: the visitor states,
the funnel progress backfills wrote for them, and the backfill markers (written by this
member or the one before it)."""

from __future__ import annotations

import orjson

from funnel.fold import FunnelProgress
from funnelstream.clickhouse import ClickHouse
from processor.backfill import state_key
from processor.catalog import FunnelCatalog
from processor.state import VisitorState

STATES_SQL = """
SELECT log_partition, visitor_key, state FROM processor_state FINAL
WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}
"""

MARKERS_SQL = """
SELECT log_partition, project_id, funnel_id, definition_hash
FROM funnel_backfills FINAL
WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}
"""

FUNNEL_PROGRESS_SQL = """
SELECT log_partition, visitor_key, funnel_id, definition_hash, progress, applied_offset
FROM visitor_funnel_progress FINAL
WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}
"""

PROGRESS_SQL = """
SELECT log_partition, project_id, funnel_id, definition_hash, resume_after
FROM funnel_backfill_progress FINAL
WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}
"""


async def stored_states(
    ch: ClickHouse, group: str, partitions: frozenset[int], catalog: FunnelCatalog
) -> list[tuple[int, str, VisitorState]]:
    """(partition, visitor key, state) of every visitor of these partitions, with the
    progress backfills wrote since each state was (0009_visitor_funnel_progress.sql)."""
    params = {"g": group, "p": sorted(partitions)}
    states: dict[tuple[int, str], VisitorState] = {}
    for p, key, raw in await ch.query_rows(STATES_SQL, params):
        project = str(key).split("\x1f", 1)[0]
        states[(int(p), str(key))] = VisitorState.loads(raw, catalog.step_counts(project))
    current = {
        (f.project, f.id): (state_key(f, catalog.version_of(f.project, f.id)), len(f.steps))
        for f in catalog.all()
    }
    for p, key, funnel_id, digest, progress, offset in await ch.query_rows(
        FUNNEL_PROGRESS_SQL, params
    ):
        state = states.get((int(p), str(key)))
        if state is None or int(offset) < state.applied_offset:
            continue  # the state was written after the backfill: it carries the funnel
        definition = current.get((state.project_id, str(funnel_id)))
        if definition is None or definition[0] != digest:
            continue  # another definition's: the current one's backfill rebuilds it
        if progress:
            doc = orjson.loads(progress)
            state.funnels[str(funnel_id)] = FunnelProgress.from_json(definition[1], doc)
        else:
            state.funnels.pop(str(funnel_id), None)
    return [(p, key, state) for (p, key), state in states.items()]


async def stored_markers(
    ch: ClickHouse, group: str, partitions: frozenset[int]
) -> list[tuple[int, str, str, str]]:
    """(partition, project, funnel, definition hash) of every backfill done for them."""
    rows = await ch.query_rows(MARKERS_SQL, {"g": group, "p": sorted(partitions)})
    return [(int(p), str(pr), str(f), str(d)) for p, pr, f, d in rows]


async def stored_progress(
    ch: ClickHouse, group: str, partitions: frozenset[int]
) -> list[tuple[int, str, str, str, str]]:
    """(partition, project, funnel, definition hash, last visitor key rebuilt) of every
    backfill's last written chunk for them."""
    rows = await ch.query_rows(PROGRESS_SQL, {"g": group, "p": sorted(partitions)})
    return [(int(p), str(pr), str(f), str(d), str(a)) for p, pr, f, d, a in rows]
