"""Live funnel queries over the processor's state tables (never over raw events).

`funnel_state` and `funnel_transitions` are ReplacingMergeTrees that a replay after a
processor crash writes again, so reads deduplicate with FINAL. Stage counts read
`funnel_state` (ordered by project, funnel, visitor: one funnel's rows only); recent
transitions read `funnel_transitions_by_time`, the copy ordered by the time each step was
reached (migration 0002), so a time range reads only its own granules.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# The transitions tables' `kind` Enum8 values (migration 0007), in the order they sort.
KIND_ORDER = {"reached": 0, "retracted": 1, "corrected": 2}


def stage_counts_sql(project: str, funnel_id: str) -> tuple[str, dict[str, Any]]:
    """Rows (level, visitors): how many visitors stand at each level now (level 0: a
    visitor whose attempts were all discarded by an exclusion, or whose session closed)."""
    sql = """
SELECT level, count() AS visitors
FROM funnel_state FINAL
WHERE project_id = {project:String} AND funnel_id = {funnel:String}
GROUP BY level""".strip()
    return sql, {"project": project, "funnel": funnel_id}


def attempt_counts_sql(project: str, funnel_id: str) -> tuple[str, dict[str, Any]]:
    """One row: per step, the attempts that reached it (funnels counting total attempts)."""
    sql = """
SELECT sumForEach(step_attempts)
FROM funnel_state FINAL
WHERE project_id = {project:String} AND funnel_id = {funnel:String}
  AND notEmpty(step_attempts)""".strip()
    return sql, {"project": project, "funnel": funnel_id}


def recent_transitions_sql(
    project: str, funnel_id: str, since: datetime
) -> tuple[str, dict[str, Any]]:
    """Rows (step 1-based, transitions): visitors who reached each step at or after
    `since` (by the time of the event that took them there). A transition a late event's
    re-fold retracted is not counted (its key's last row is the retraction)."""
    sql = """
SELECT step, count() AS transitions
FROM funnel_transitions_by_time FINAL
WHERE project_id = {project:String} AND funnel_id = {funnel:String}
  AND reached_at >= {since:DateTime64(3, 'UTC')}
  AND kind != 'retracted'
GROUP BY step""".strip()
    return sql, {"project": project, "funnel": funnel_id, "since": since}


def transitions_after_sql(
    project: str,
    funnel_id: str,
    after: datetime,
    limit: int,
    past: tuple[datetime, str, int, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Transitions written at or after `after` (processed_at), oldest write first: what the
    stream sends. Not FINAL: the stream deduplicates by (visitor, step) itself. `past`: the
    (processed_at, visitor, step, kind) of the last row of a full page, to read the next page
    after it (more than `limit` rows can share a write time)."""
    params: dict[str, Any] = {"project": project, "funnel": funnel_id, "after": after}
    keyset = ""
    if past is not None:
        keyset = """
  AND (processed_at, visitor_id, step, toInt8(kind))
    > ({p_at:DateTime64(3, 'UTC')}, {p_v:String}, {p_s:UInt8}, {p_k:Int8})"""
        params.update(p_at=past[0], p_v=past[1], p_s=past[2], p_k=KIND_ORDER[past[3]])
    sql = f"""
SELECT visitor_id, step, reached_at, chain_started_at, processed_at, kind
FROM funnel_transitions_by_time
WHERE project_id = {{project:String}} AND funnel_id = {{funnel:String}}
  AND processed_at >= {{after:DateTime64(3, 'UTC')}}{keyset}
ORDER BY processed_at, visitor_id, step, kind
LIMIT {{limit:UInt32}}""".strip()
    return sql, {**params, "limit": limit}
