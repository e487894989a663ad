"""What a processor reads back when it is assigned partitions: the visitor states and
backfill markers written for them (by this member or the one before it)."""

from __future__ import annotations

from funnelstream.clickhouse import ClickHouse

STATES_SQL = """
SELECT log_partition, visitor_key, state FROM processor_state FINAL
WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}
"""

MARKERS_SQL = """
SELECT log_partition, project_id, funnel_id, definition_hash
FROM funnel_backfills FINAL
WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}
"""

PROGRESS_SQL = """
SELECT log_partition, project_id, funnel_id, definition_hash, resume_after
FROM funnel_backfill_progress FINAL
WHERE consumer_group = {g:String} AND log_partition IN {p:Array(UInt32)}
"""


async def stored_states(
    ch: ClickHouse, group: str, partitions: frozenset[int]
) -> list[tuple[int, str, str]]:
    """(partition, visitor key, state JSON) of every visitor of these partitions."""
    rows = await ch.query_rows(STATES_SQL, {"g": group, "p": sorted(partitions)})
    return [(int(p), str(k), str(s)) for p, k, s in rows]


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
