"""Retention and repeat purchase: cohorts by the first occurrence of one event, returns by
another, per calendar day, week or month after, in an IANA time zone (rule:
query_api/sql/cohorts.py; arithmetic: query_api/cohorts.py; docs/cohort-retention.md)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from funnelstream import metrics
from funnelstream.http_errors import keyed_route_errors
from query_api.cohorts import Cohort, Period, cohorts_from_rows, totals
from query_api.csv_answer import CSV_RESPONSE, csv_response, wants_csv
from query_api.deps import ClickHouseDep, ReadProject
from query_api.routes.reports import From, To, parse_range, parse_time_zone
from query_api.routes.segments import SegmentQuery, parse_segment
from query_api.sql.cohorts import RetentionQuery, retention_sql

router = APIRouter(prefix="/v1/retention", tags=["retention"], responses=keyed_route_errors(503))

# More breakdown values than this is an id, not a segment.
MAX_VALUES = 50
# Cohorts a range may hold (about 13 months of days): bounds the answer's size.
MAX_COHORTS = 400
_SHORTEST_DAYS = {"day": 1, "week": 7, "month": 28}
Name = Annotated[str, Query(min_length=1, max_length=200)]


class PeriodOut(BaseModel):
    period: int = Field(description="Calendar periods after the cohort's (0: the same)")
    returned: int = Field(description="Entities that returned in this period (bounded)")
    returned_on_or_after: int = Field(
        description="Entities that returned in this period or a later one, up to `periods`"
        " (unbounded)"
    )
    rate: float
    rate_on_or_after: float
    complete: bool = Field(description="The period has ended by `to` (or now)")


class CohortOut(BaseModel):
    start: date = Field(description="First day of the cohort's period, in `tz`")
    value: str = Field(description="The breakdown value ('' without a breakdown)")
    entities: int
    repeated: int = Field(description="Entities with at least one return")
    repeat_rate: float
    periods: list[PeriodOut]


class TotalOut(BaseModel):
    value: str
    entities: int
    repeated: int
    repeat_rate: float
    periods: list[PeriodOut] = Field(
        description="Summed over the cohorts whose period is complete (all, if none is)"
    )


class RetentionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "start_event": "purchase",
                    "return_event": "purchase",
                    "interval": "week",
                    "periods": 1,
                    "tz": "Europe/Berlin",
                    "count_by": "visitor",
                    "breakdown": None,
                    "from_": "2025-01-06T00:00:00Z",
                    "to": "2025-02-03T00:00:00Z",
                    "cohorts": [
                        {
                            "start": "2025-01-06",
                            "value": "",
                            "entities": 120,
                            "repeated": 30,
                            "repeat_rate": 0.25,
                            "periods": [
                                {
                                    "period": 0,
                                    "returned": 6,
                                    "returned_on_or_after": 30,
                                    "rate": 0.05,
                                    "rate_on_or_after": 0.25,
                                    "complete": True,
                                },
                                {
                                    "period": 1,
                                    "returned": 12,
                                    "returned_on_or_after": 26,
                                    "rate": 0.1,
                                    "rate_on_or_after": 0.2167,
                                    "complete": True,
                                },
                            ],
                        }
                    ],
                    "totals": [],
                    "query_ms": 8.2,
                }
            ]
        }
    )

    start_event: str
    return_event: str
    interval: str
    periods: int
    tz: str
    count_by: str
    breakdown: str | None
    from_: datetime
    to: datetime
    cohorts: list[CohortOut]
    totals: list[TotalOut] = Field(description="Per breakdown value, over all cohorts")
    query_ms: float


def _periods(periods: list[Period]) -> list[PeriodOut]:
    return [
        PeriodOut(
            period=p.period,
            returned=p.returned,
            returned_on_or_after=p.returned_on_or_after,
            rate=p.rate,
            rate_on_or_after=p.rate_on_or_after,
            complete=p.complete,
        )
        for p in periods
    ]


def _csv(cohorts: list[Cohort]) -> Response:
    header = (
        "cohort", "value", "entities", "repeated", "repeat_rate", "period", "returned",
        "returned_on_or_after", "rate", "rate_on_or_after", "complete",
    )  # fmt: skip
    rows = [
        (
            c.start.isoformat(),
            c.value,
            c.entities,
            c.repeated,
            c.repeat_rate,
            p.period,
            p.returned,
            p.returned_on_or_after,
            p.rate,
            p.rate_on_or_after,
            p.complete,
        )  # fmt: skip
        for c in cohorts
        for p in c.periods
    ]
    return csv_response(header, rows, "retention")


@router.get(
    "",
    response_model=RetentionOut,
    summary="Retention and repeat purchase by cohort",
    responses=CSV_RESPONSE,
)
async def project_retention(
    request: Request,
    project: ReadProject,
    ch: ClickHouseDep,
    start_event: Annotated[str, Query(min_length=1, max_length=200, description="e.g. purchase")],
    return_event: Annotated[
        str | None, Query(min_length=1, max_length=200, description="default: start_event")
    ] = None,
    interval: Literal["day", "week", "month"] = "week",
    periods: Annotated[int, Query(ge=0, le=366, description="Periods after the cohort's")] = 8,
    tz: Annotated[str, Query(max_length=64, description="IANA time zone of the calendar")] = "UTC",
    count_by: Literal["visitor", "user"] = "visitor",
    breakdown: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="A property of the cohort event"),
    ] = None,
    segment: SegmentQuery = None,
    from_: From = None,
    to: To = None,
) -> RetentionOut | Response:
    """Entities whose first `start_event` falls in [from, to), in cohorts by its calendar
    period (day, week from Monday, month) in `tz`; per period after it, how many sent a
    `return_event` (later than the cohort event, before `to`): in that period (bounded)
    and in it or a later one (unbounded), with rates and the repeat rate (any return).
    With `breakdown`, cohorts are split by that property of the cohort event. With
    `Accept: text/csv`: one row per cohort and period."""
    started = time.monotonic()
    zone = parse_time_zone(tz)
    start, end = parse_range(from_, to)
    if (end - start).total_seconds() / 86400 / _SHORTEST_DAYS[interval] > MAX_COHORTS:
        raise HTTPException(
            400,
            {
                "error": "too_many_cohorts",
                "field": "from",
                "message": f"the range holds more than {MAX_COHORTS} {interval} cohorts;"
                " shorten it or use a longer interval",
            },
        )
    query = RetentionQuery(
        project.id,
        start,
        end,
        start_event,
        return_event or start_event,
        interval,
        periods,
        zone,
        count_by,
        breakdown,
        parse_segment(segment, project.id),
    )
    # ClickHouse errors become HTTP answers in one place: query_api/errors.py.
    rows = await ch.query_rows(*retention_sql(query))
    until = min(end, datetime.now(UTC))
    cohorts = cohorts_from_rows(rows, periods, interval, zone, until)
    if len({c.value for c in cohorts}) > MAX_VALUES:
        raise HTTPException(
            400,
            {
                "error": "too_many_values",
                "field": "breakdown",
                "message": f"more than {MAX_VALUES} values; break down by a segment, not an id",
            },
        )
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("retention").observe(elapsed)
    if wants_csv(request):
        return _csv(cohorts)
    return RetentionOut(
        start_event=start_event,
        return_event=query.return_event,
        interval=interval,
        periods=periods,
        tz=zone,
        count_by=count_by,
        breakdown=breakdown,
        from_=start,
        to=end,
        cohorts=[
            CohortOut(
                start=c.start,
                value=c.value,
                entities=c.entities,
                repeated=c.repeated,
                repeat_rate=c.repeat_rate,
                periods=_periods(c.periods),
            )
            for c in cohorts
        ],
        totals=[
            TotalOut(
                value=t.value,
                entities=t.entities,
                repeated=t.repeated,
                repeat_rate=t.repeat_rate,
                periods=_periods(t.periods),
            )
            for t in totals(cohorts, periods)
        ],
        query_ms=round(elapsed * 1000, 2),
    )
