"""Forecasts of a saved funnel from its observed step conversions: conversions at each step
for a top-of-funnel volume (given, or today's traffic over a horizon), the entrants and
the days a target at the last step needs, each with an interval (model:
query_api/forecast.py, docs/forecasts.md)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from funnelstream import metrics
from funnelstream.http_errors import keyed_route_errors
from query_api import forecast
from query_api.csv_answer import CSV_RESPONSE, csv_response, wants_csv
from query_api.deps import ClickHouseDep, CompilerDep, ReadProject
from query_api.routes.funnel_lookup import ReportFunnel
from query_api.routes.reports import From, To, parse_range, run_report
from query_api.routes.segments import SegmentQuery, parse_segment

router = APIRouter(
    prefix="/v1/funnels", tags=["funnel decisions"], responses=keyed_route_errors(404, 409, 503)
)

# Beyond these a forecast says nothing a smaller one does not, and the draws get costly.
MAX_VOLUME = 1_000_000_000


class EstimateOut(BaseModel):
    expected: float | None = Field(description="Point estimate; null where not finite")
    low: float | None = Field(description="Central interval of `level`")
    high: float | None


class StepRateOut(BaseModel):
    index: int
    event: str
    converted: int = Field(description="Entities that reached this step")
    trials: int = Field(
        description="Entities that reached the previous step (in progress: not converted)"
    )
    rate: EstimateOut = Field(description="converted / trials, Jeffreys interval")


class StepForecastOut(BaseModel):
    index: int
    event: str
    conversions: EstimateOut = Field(
        description="Entities expected to reach this step (step 0: entrants)"
    )


class TargetOut(BaseModel):
    conversions: int = Field(description="The target at the last step")
    entrants_needed: EstimateOut
    days_needed: EstimateOut = Field(description="At the observed daily entrants")


class ForecastOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel_id": "checkout",
                    "from_": "2025-01-01T00:00:00Z",
                    "to": "2025-01-15T00:00:00Z",
                    "level": 0.9,
                    "horizon_days": 7,
                    "entrants_source": "current_traffic",
                    "entrants_per_day": {"expected": 50.0, "low": 47.0, "high": 53.2},
                    "rates": [
                        {
                            "index": 1,
                            "event": "buy",
                            "converted": 70,
                            "trials": 700,
                            "rate": {"expected": 0.1, "low": 0.083, "high": 0.12},
                        }
                    ],
                    "steps": [
                        {
                            "index": 0,
                            "event": "view",
                            "conversions": {"expected": 350.0, "low": 313.0, "high": 389.0},
                        },
                        {
                            "index": 1,
                            "event": "buy",
                            "conversions": {"expected": 35.2, "low": 24.0, "high": 47.0},
                        },
                    ],
                    "target": {
                        "conversions": 100,
                        "entrants_needed": {"expected": 1000.0, "low": 840.0, "high": 1210.0},
                        "days_needed": {"expected": 20.0, "low": 16.6, "high": 24.5},
                    },
                    "query_ms": 40.1,
                }
            ]
        }
    )

    funnel_id: str
    from_: datetime
    to: datetime
    level: float
    horizon_days: float
    entrants_source: str = Field(description="`given` (`entrants`) or `current_traffic`")
    entrants_per_day: EstimateOut = Field(description="Observed in [from, to)")
    rates: list[StepRateOut]
    steps: list[StepForecastOut]
    target: TargetOut | None
    query_ms: float


def _estimate(e: forecast.Estimate) -> EstimateOut:
    return EstimateOut(expected=e.expected, low=e.low, high=e.high)


def _csv(result: forecast.Forecast, labels: list[str]) -> Response:
    header = (
        "index", "event", "converted", "trials", "rate", "rate_low", "rate_high",
        "expected_conversions", "conversions_low", "conversions_high",
    )  # fmt: skip
    rates: list[forecast.StepRate | None] = [None, *result.rates]
    rows = [
        (
            k,
            labels[k],
            r and r.converted,
            r and r.trials,
            r and r.rate.expected,
            r and r.rate.low,
            r and r.rate.high,
            s.expected,
            s.low,
            s.high,
        )  # fmt: skip
        for k, (r, s) in enumerate(zip(rates, result.steps, strict=True))
    ]
    return csv_response(header, rows, "forecast")


@router.get(
    "/{funnel_id}/forecast",
    response_model=ForecastOut,
    summary="Forecast conversions and targets",
    responses=CSV_RESPONSE,
)
async def funnel_forecast(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    horizon_days: Annotated[
        float, Query(gt=0, le=366, description="Days ahead (with today's traffic)")
    ] = 30,
    entrants: Annotated[
        int | None,
        Query(ge=1, le=MAX_VOLUME, description="Top-of-funnel volume (default: today's traffic)"),
    ] = None,
    target: Annotated[
        int | None, Query(ge=1, le=MAX_VOLUME, description="Conversions wanted at the last step")
    ] = None,
    level: Annotated[float, Query(ge=0.5, le=0.99, description="Interval level")] = 0.9,
    from_: From = None,
    to: To = None,
    segment: SegmentQuery = None,
) -> ForecastOut | Response:
    """Step conversions observed in [from, to) (default: the last 30 days; counted as the
    report counts them, in progress as not converted yet) give: the conversions expected at
    each step from `entrants` entrants, or from the observed daily entrants over
    `horizon_days`; with `target`, the entrants and the days at today's traffic a target at
    the last step needs. Intervals reflect the sample size (a beta-binomial chain;
    docs/forecasts.md). With `Accept: text/csv`: one row per step."""
    started = time.monotonic()
    start, end = parse_range(from_, to)
    filters = parse_segment(segment, project.id)
    report = await run_report(ch, compiler, funnel, start, end, filters)
    days = (end - start).total_seconds() / 86400
    result = await run_in_threadpool(
        lambda: forecast.forecast(
            [s.visitors for s in report.steps],
            days,
            horizon_days=horizon_days,
            entrants=entrants,
            target=target,
            level=level,
        )
    )
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("forecast").observe(elapsed)
    labels = [s.label() for s in funnel.steps]
    if wants_csv(request):
        return _csv(result, labels)
    target_out = None
    if result.entrants_needed is not None and result.days_needed is not None and target:
        target_out = TargetOut(
            conversions=target,
            entrants_needed=_estimate(result.entrants_needed),
            days_needed=_estimate(result.days_needed),
        )
    return ForecastOut(
        funnel_id=funnel.id,
        from_=start,
        to=end,
        level=level,
        horizon_days=horizon_days,
        entrants_source="current_traffic" if entrants is None else "given",
        entrants_per_day=_estimate(result.entrants_per_day),
        rates=[
            StepRateOut(
                index=k + 1,
                event=labels[k + 1],
                converted=r.converted,
                trials=r.trials,
                rate=_estimate(r.rate),
            )
            for k, r in enumerate(result.rates)
        ],
        steps=[
            StepForecastOut(index=k, event=labels[k], conversions=_estimate(s))
            for k, s in enumerate(result.steps)
        ],
        target=target_out,
        query_ms=round(elapsed * 1000, 2),
    )
