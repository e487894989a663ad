"""The entities of a segment (parsed by query_api/routes/segments.py) as a subquery: those
that sent at least one event in [start, end) on which every filter holds, each filter the
same SQL test a funnel step's filter is (funnel/sql/filters.py). Here, below query_api,
so the funnel report itself (funnel/sql/report.py) restricts every report to a segment."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from funnel.sql.filters import Params, filter_sql
from schemas.funnels import PropertyFilter


def segment_entities_sql(
    filters: Sequence[PropertyFilter],
    entity: str,
    join: str,
    project_param: str,
    params: Params,
    start: datetime,
    end: datetime,
) -> str:
    """`SELECT DISTINCT entity ...`; `entity` and `join` name the counted entity of an
    event row, as the report names it."""
    conditions = " AND ".join(f"({filter_sql(f, params)})" for f in filters)
    return f"""
        SELECT DISTINCT {entity}
        FROM events{join}
        WHERE events.project_id = {project_param}
          AND events.timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
          AND events.timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
          AND {conditions}"""
