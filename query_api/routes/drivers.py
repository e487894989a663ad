"""Conversion drivers of a saved funnel's step: what the entities that went on did or had
that those who dropped did not, and the other way round (counts: query_api/sql/drivers.py;
statistics: query_api/drivers.py; docs/conversion-drivers.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from funnelstream import metrics
from funnelstream.http_errors import keyed_route_errors
from query_api import drivers
from query_api.csv_answer import CSV_RESPONSE, csv_response, wants_csv
from query_api.deps import ClickHouseDep, CompilerDep, ReadProject
from query_api.routes.analysis import _step
from query_api.routes.funnel_lookup import ReportFunnel
from query_api.routes.reports import From, To, parse_range
from query_api.routes.segments import SegmentQuery, parse_segment
from query_api.sql.drivers import drivers_sql

router = APIRouter(
    prefix="/v1/funnels", tags=["funnel decisions"], responses=keyed_route_errors(404, 409, 503)
)

# Features read from the engine, the most frequent first: bounds the tests per request.
MAX_FEATURES = 500


class DriverOut(BaseModel):
    kind: str = Field(
        description="`event` (sent between the steps), `property` (of the step"
        " event) or `session` (a field of its session)"
    )
    name: str
    value: str = Field(description="'' for kind `event`")
    converted_with: int
    dropped_with: int
    conversion_with: float
    conversion_without: float | None
    odds_ratio: float = Field(description="Odds of converting with the feature over without")
    odds_ratio_ci_low: float
    odds_ratio_ci_high: float
    test: str = Field(description="`z` (two-proportion) or `fisher` (exact)")
    p_value: float
    p_value_adjusted: float = Field(description="Holm-Bonferroni over every feature tested")


class DriversOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel_id": "checkout",
                    "step": 1,
                    "from_": "2025-01-01T00:00:00Z",
                    "to": "2025-01-31T00:00:00Z",
                    "converted": 96,
                    "dropped": 204,
                    "tested": 5,
                    "converting": [
                        {
                            "kind": "event",
                            "name": "chat",
                            "value": "",
                            "converted_with": 61,
                            "dropped_with": 24,
                            "conversion_with": 0.72,
                            "conversion_without": 0.16,
                            "odds_ratio": 13.1,
                            "odds_ratio_ci_low": 7.1,
                            "odds_ratio_ci_high": 24.2,
                            "test": "z",
                            "p_value": 1e-19,
                            "p_value_adjusted": 5e-19,
                        }
                    ],
                    "dropping": [],
                    "query_ms": 31.0,
                }
            ]
        }
    )

    funnel_id: str
    step: int
    from_: datetime
    to: datetime
    converted: int = Field(description="Entities that reached `step` and the next")
    dropped: int = Field(description="Entities that stopped at `step` and can no longer go on")
    tested: int = Field(description="Features with at least `min_support` entities")
    converting: list[DriverOut] = Field(description="Odds ratio above 1, strongest first")
    dropping: list[DriverOut] = Field(description="Odds ratio below 1, strongest first")
    query_ms: float


def _driver(d: drivers.Driver) -> DriverOut:
    return DriverOut(
        kind=d.feature.kind,
        name=d.feature.name,
        value=d.feature.value,
        converted_with=d.feature.converted_with,
        dropped_with=d.feature.dropped_with,
        conversion_with=d.conversion_with,
        conversion_without=d.conversion_without,
        odds_ratio=d.odds_ratio,
        odds_ratio_ci_low=d.odds_ratio_low,
        odds_ratio_ci_high=d.odds_ratio_high,
        test=d.test,
        p_value=d.p_value,
        p_value_adjusted=d.p_value_adjusted,
    )


def _csv(ranked: drivers.Drivers) -> Response:
    header = ("direction", *DriverOut.model_fields)
    rows = [
        (direction, *_driver(d).model_dump().values())
        for direction, listed in (("converting", ranked.converting), ("dropping", ranked.dropping))
        for d in listed
    ]
    return csv_response(header, rows, "drivers")


@router.get(
    "/{funnel_id}/drivers",
    response_model=DriversOut,
    summary="Why they convert or drop at a step",
    responses=CSV_RESPONSE,
)
async def funnel_drivers(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    step: Annotated[int, Query(description="0-based, not the last step")],
    min_support: Annotated[
        int, Query(ge=1, le=1_000_000, description="Entities a feature needs to be tested")
    ] = 5,
    top: Annotated[int, Query(ge=1, le=100, description="Features listed each way")] = 10,
    alpha: Annotated[float, Query(gt=0, lt=0.5, description="Level of the intervals")] = 0.05,
    segment: SegmentQuery = None,
    from_: From = None,
    to: To = None,
) -> DriversOut | Response:
    """Of the entities that reached `step`, those that went on to the next step against
    those that dropped there (still in progress: left out): per feature (an event sent
    between the steps, a property of the step's event, a field of its session), the odds
    ratio of converting with it, its interval, a two-sided test (z, or Fisher's exact
    test for small counts) and a Holm-adjusted p-value; features held by fewer than
    `min_support` entities are not tested. The `top` strongest each way. With
    `Accept: text/csv`: one row per feature listed, `direction` first."""
    started = time.monotonic()
    _step(funnel, step, "step", last_ok=False)
    start, end = parse_range(from_, to)
    now = min(datetime.now(UTC), end)
    filters = parse_segment(segment, project.id)
    query = drivers_sql(
        compiler(funnel), funnel.project, start, end, now, step, MAX_FEATURES, filters
    )
    # ClickHouse errors become HTTP answers in one place: query_api/errors.py.
    rows = await ch.query_rows(*query)
    converted, dropped, features = drivers.features_from_rows(rows)
    ranked = await run_in_threadpool(
        lambda: drivers.rank(
            converted, dropped, features, min_support=min_support, top=top, alpha=alpha
        )
    )
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("drivers").observe(elapsed)
    if wants_csv(request):
        return _csv(ranked)
    return DriversOut(
        funnel_id=funnel.id,
        step=step,
        from_=start,
        to=end,
        converted=converted,
        dropped=dropped,
        tested=ranked.tested,
        converting=[_driver(d) for d in ranked.converting],
        dropping=[_driver(d) for d in ranked.dropping],
        query_ms=round(elapsed * 1000, 2),
    )
