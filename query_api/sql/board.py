"""The stage board's queries: who stands at each stage of a funnel now.

Read from `funnel_state` FINAL, the processor's per-visitor state that the live counts
(query_api/sql/live.py) read too, so the board lists exactly the visitors those counts
count. A visitor's chosen properties and last activity are looked up in `events`: the
newest value (by event time) of each named property, and the newest event time. Erasure
deletes a visitor's state and events (processor/erase.py), so an erased visitor is on
neither side.

Each query is a few CTEs built by small functions: `board` (the state rows at a stage),
`activity` (the events lookup), and the outer select that filters on property values and
pages by the keyset (level, entered_at, visitor_id). Without a property filter the page is
cut inside `board`, so only the page's visitors are looked up in `events`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

Params = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BoardCursor:
    """The last row of a page: the next page starts after it."""

    level: int
    entered_ms: int
    visitor_id: str


@dataclass(frozen=True, slots=True)
class BoardQuery:
    """What a board request asks for. `level`: one stage (1-based) or None for all;
    `stalled_before`: only visitors who entered their stage at or before it; `properties`:
    names looked up per visitor; `where`: (name, value) pairs a visitor's looked-up value
    must equal (their names are among `properties`); `by_user`: the funnel counts users,
    so a row names a user, or a never-identified visitor counted on its own."""

    project: str
    funnel_id: str
    level: int | None = None
    stalled_before: datetime | None = None
    properties: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()
    by_user: bool = False

    @property
    def entity(self) -> str:
        """What names an event's `funnel_state` row: its visitor, or for funnels counting
        users its user id when it carries one (an event sent before its visitor was
        identified counts as that visitor's, not the user's)."""
        return "if(user_id != '', user_id, visitor_id)" if self.by_user else "visitor_id"


def _board_cte(q: BoardQuery, params: Params, page: str) -> str:
    conditions = [
        "project_id = {project:String}",
        "funnel_id = {funnel:String}",
        "level > 0",
    ]
    params.update(project=q.project, funnel=q.funnel_id)
    if q.level is not None:
        conditions.append("level = {level:UInt8}")
        params["level"] = q.level
    if q.stalled_before is not None:
        conditions.append("step_reached_at[level] <= {stalled_before:DateTime64(3, 'UTC')}")
        params["stalled_before"] = q.stalled_before
    where = "\n      AND ".join(conditions)
    return f"""board AS (
    SELECT visitor_id, level, step_reached_at[level] AS entered_at
    FROM funnel_state FINAL
    WHERE {where}{page}
)"""


def _activity_cte(q: BoardQuery, params: Params) -> str:
    """Per entity on the board: its newest event time and each named property's newest
    value ('' if none of its events carries the property)."""
    columns = ["max(timestamp) AS last_seen"]
    for i, name in enumerate(q.properties):
        params[f"name{i}"] = name
        columns.append(
            f"argMaxIf(properties[{{name{i}:String}}], timestamp,"
            f" mapContains(properties, {{name{i}:String}})) AS p{i}"
        )
    key = q.entity
    return f"""activity AS (
    SELECT {key} AS entity, {", ".join(columns)}
    FROM events
    WHERE project_id = {{project:String}} AND {key} IN (SELECT visitor_id FROM board)
    GROUP BY {key}
)"""


def _after(cursor: BoardCursor | None, params: Params, prefix: str) -> list[str]:
    if cursor is None:
        return []
    params.update(c_level=cursor.level, c_entered=cursor.entered_ms, c_visitor=cursor.visitor_id)
    return [
        f"({prefix}level, toUnixTimestamp64Milli({prefix}entered_at), {prefix}visitor_id)"
        " > ({c_level:UInt8}, {c_entered:Int64}, {c_visitor:String})"
    ]


def _value_filters(q: BoardQuery, params: Params) -> list[str]:
    out = []
    for i, (name, value) in enumerate(q.where):
        params[f"value{i}"] = value
        out.append(f"a.p{q.properties.index(name)} = {{value{i}:String}}")
    return out


ORDER = "ORDER BY {p}level, {p}entered_at, {p}visitor_id"


def board_page_sql(q: BoardQuery, cursor: BoardCursor | None, limit: int) -> tuple[str, Params]:
    """Rows (level, entered_at, visitor_id, last_seen, p0, p1, ...): one page of the board
    in (level, entered_at, visitor_id) order, after `cursor`."""
    params: Params = {"limit": limit}
    page = ""
    if not q.where:
        after = _after(cursor, params, "")
        cut = "".join(f"\n      AND {c}" for c in after)
        page = f"{cut}\n    {ORDER.format(p='')}\n    LIMIT {{limit:UInt32}}"
    board = _board_cte(q, params, page)
    activity = _activity_cte(q, params)
    outer = _value_filters(q, params) + (_after(cursor, params, "b.") if q.where else [])
    where = f"\nWHERE {' AND '.join(outer)}" if outer else ""
    picked = "".join(f", a.p{i}" for i in range(len(q.properties)))
    sql = f"""WITH {board},
{activity}
SELECT b.level, b.entered_at, b.visitor_id, a.last_seen{picked}
FROM board AS b LEFT JOIN activity AS a ON a.entity = b.visitor_id{where}
{ORDER.format(p="b.")}
LIMIT {{limit:UInt32}}"""
    return sql, params


def board_totals_sql(q: BoardQuery) -> tuple[str, Params]:
    """Rows (level, visitors): how many the board holds at each stage with its filters."""
    params: Params = {}
    board = _board_cte(q, params, "")
    if not q.where:
        sql = f"WITH {board}\nSELECT level, count() AS visitors FROM board GROUP BY level"
        return sql, params
    activity = _activity_cte(q, params)
    where = " AND ".join(_value_filters(q, params))
    sql = f"""WITH {board},
{activity}
SELECT b.level, count() AS visitors
FROM board AS b LEFT JOIN activity AS a ON a.entity = b.visitor_id
WHERE {where}
GROUP BY b.level"""
    return sql, params
