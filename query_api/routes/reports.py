"""Funnel reports over raw events: for a saved funnel, or for a definition sent ad hoc."""

from __future__ import annotations

import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from funnel.sql.report import report_sql, trend_sql
from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.http_errors import keyed_route_errors
from query_api import compute
from query_api.csv_answer import CSV_RESPONSE, records_response, wants_csv
from query_api.deps import ClickHouseDep, CompilerDep, FunnelCompiler, ReadProject
from query_api.routes.funnel_lookup import ReportFunnel
from query_api.routes.funnels import parse_definition
from query_api.routes.segments import SegmentQuery, parse_segment
from schemas.funnels import FunnelDefinition, PropertyFilter

router = APIRouter(
    prefix="/v1/funnels", tags=["funnel reports"], responses=keyed_route_errors(404, 409, 503)
)


class TimeToConvertOut(BaseModel):
    median_from_start: float
    p90_from_start: float
    avg_from_start: float
    median_from_previous: float
    p90_from_previous: float
    avg_from_previous: float


class StepOut(BaseModel):
    index: int
    event: str
    name: str | None
    visitors: int = Field(
        description="Counted entities (visitors, or users) reaching the step; attempts with"
        " counting=total"
    )
    conversion_from_start: float
    conversion_from_previous: float
    dropped: int = Field(description="Reached the step, not the next, and can no longer")
    in_progress: int = Field(description="Stopped here but the window is still open")
    median_seconds_from_start: float | None
    time_to_convert: TimeToConvertOut | None


class StepChangeOut(BaseModel):
    index: int
    visitors: int
    compare_visitors: int = Field(description="Entities reaching the step in the other period")
    visitors_change: int = Field(description="visitors - compare_visitors")
    visitors_change_relative: float | None = Field(
        description="visitors_change / compare_visitors; null where that is 0"
    )
    conversion_from_start: float
    compare_conversion_from_start: float
    conversion_change: float = Field(description="Difference of conversion_from_start")
    conversion_change_relative: float | None = Field(
        description="conversion_change / compare_conversion_from_start; null where that is 0"
    )


class ComparisonOut(BaseModel):
    from_: datetime
    to: datetime
    steps: list[StepOut] = Field(description="The report of the other period")
    changes: list[StepChangeOut] = Field(description="Per step, this period against the other")


class ReportOut(BaseModel):
    funnel_id: str
    from_: datetime
    to: datetime
    window_seconds: int
    count_by: str
    steps: list[StepOut]
    comparison: ComparisonOut | None = Field(
        default=None, description="With compare=previous or compare_start/compare_end"
    )
    query_ms: float


class AdHocReportIn(BaseModel):
    funnel: dict[str, Any] = Field(description="A funnel definition, as for POST /v1/funnels")
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None


# Times a query may name: ClickHouse's DateTime64 holds 1900..2299; events start in 2000
# (schemas/events.py). Outside this a time is refused by name rather than reaching the engine.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2200, 1, 1, tzinfo=UTC)


def parse_time(value: str | None, default: datetime, name: str) -> datetime:
    if value is None:
        return default
    text = value.strip()
    try:
        if text.lstrip("-").isdigit():
            parsed = datetime.fromtimestamp(int(text) / 1000, UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    # Epoch ms past the calendar overflow (OverflowError, OSError) rather than misparse.
    except (ValueError, OverflowError, OSError) as exc:
        raise HTTPException(
            400, {"error": "invalid_time", "field": name, "message": "ISO-8601 or epoch ms"}
        ) from exc
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if not EARLIEST_TIME <= parsed <= LATEST_TIME:
        raise HTTPException(
            400,
            {
                "error": "time_out_of_range",
                "field": name,
                "message": f"must be between {EARLIEST_TIME.date()} and {LATEST_TIME.date()}",
            },
        )
    return parsed


@cache
def _zones() -> frozenset[str]:
    # "localtime" names the machine's zone, not an IANA one (and ClickHouse lacks it).
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def parse_time_zone(name: str, field: str = "tz") -> str:
    """An IANA time zone name, or a 400 naming `field`."""
    if name not in _zones():
        raise HTTPException(
            400,
            {
                "error": "invalid_time_zone",
                "field": field,
                "message": "an IANA time zone name, e.g. Europe/Berlin",
            },
        )
    return name


# The range every report takes, declared once; parse_range reads it.
From = Annotated[str | None, Query(alias="from", description="ISO-8601 or epoch ms")]
To = Annotated[str | None, Query(description="ISO-8601 or epoch ms (exclusive)")]


def parse_range(from_: str | None, to: str | None) -> tuple[datetime, datetime]:
    """[from, to); default: the last 30 days."""
    end = parse_time(to, datetime.now(UTC) + timedelta(seconds=1), "to")
    start = parse_time(from_, end - timedelta(days=30), "from")
    if start >= end:
        raise HTTPException(
            400, {"error": "invalid_range", "field": "from", "message": "from must be before to"}
        )
    return start, end


@dataclass(frozen=True, slots=True)
class CompareParams:
    compare: str | None
    compare_start: str | None
    compare_end: str | None


def compare_params(
    compare: Annotated[
        Literal["previous"] | None,
        Query(
            description="previous: also the period of the same length just before",
            openapi_examples={"example": {"value": "previous"}},
        ),
    ] = None,
    compare_start: Annotated[
        str | None,
        Query(
            description="Start of a period to compare with (ISO-8601 or epoch ms)",
            openapi_examples={"example": {"value": "2025-01-01T00:00:00Z"}},
        ),
    ] = None,
    compare_end: Annotated[
        str | None,
        Query(
            description="End of that period (exclusive)",
            openapi_examples={"example": {"value": "2025-01-08T00:00:00Z"}},
        ),
    ] = None,
) -> CompareParams:
    return CompareParams(compare, compare_start, compare_end)


Comparison = Annotated[CompareParams, Depends(compare_params)]


def comparison_period(
    asked: CompareParams, start: datetime, end: datetime
) -> tuple[datetime, datetime] | None:
    """The other period: the one of the same length ending at `start` (previous), or
    [compare_start, compare_end); None without a comparison; a 400 naming the field."""
    given = (asked.compare_start, asked.compare_end)
    if asked.compare == "previous":
        if given != (None, None):
            raise HTTPException(
                400,
                {
                    "error": "invalid_comparison",
                    "field": "compare",
                    "message": "compare=previous or compare_start/compare_end, not both",
                },
            )
        return start - (end - start), start
    if given == (None, None):
        return None
    for value, name in ((asked.compare_start, "compare_start"), (asked.compare_end, "compare_end")):
        if value is None:
            raise HTTPException(
                400,
                {
                    "error": "invalid_comparison",
                    "field": name,
                    "message": "compare_start and compare_end go together",
                },
            )
    other_start = parse_time(asked.compare_start, start, "compare_start")
    other_end = parse_time(asked.compare_end, end, "compare_end")
    if other_start >= other_end:
        raise HTTPException(
            400,
            {
                "error": "invalid_range",
                "field": "compare_start",
                "message": "compare_start must be before compare_end",
            },
        )
    return other_start, other_end


async def run_compared(
    ch: ClickHouse,
    compiler: FunnelCompiler,
    funnel: FunnelDefinition,
    start: datetime,
    end: datetime,
    segment: tuple[PropertyFilter, ...],
    asked: CompareParams,
) -> ReportOut:
    """The report, and with a comparison asked, the other period's with the change per
    step (the same funnel and segment)."""
    period = comparison_period(asked, start, end)
    report = await run_report(ch, compiler, funnel, start, end, segment)
    if period is None:
        return report
    other = await run_report(ch, compiler, funnel, *period, segment)
    changes = compute.step_changes(
        [s.visitors for s in report.steps], [s.visitors for s in other.steps]
    )
    comparison = ComparisonOut(
        from_=period[0],
        to=period[1],
        steps=other.steps,
        changes=[StepChangeOut.model_validate(c.as_dict()) for c in changes],
    )
    query_ms = round(report.query_ms + other.query_ms, 2)
    return report.model_copy(update={"comparison": comparison, "query_ms": query_ms})


async def run_report(
    ch: ClickHouse,
    compiler: FunnelCompiler,
    funnel: FunnelDefinition,
    start: datetime,
    end: datetime,
    segment: tuple[PropertyFilter, ...] = (),
) -> ReportOut:
    started = time.monotonic()
    now = datetime.now(UTC)
    sql, params = report_sql(compiler(funnel), funnel.project, start, end, min(now, end), segment)
    # ClickHouse errors become HTTP answers in one place: query_api/errors.py.
    rows = await ch.query_rows(sql, params)
    got = compute.steps_from_rows(rows, len(funnel.steps))
    steps = compute.build_steps(
        [s.label() for s in funnel.steps],
        [s.name for s in funnel.steps],
        got.reached,
        got.medians_ms,
        got.times,
        got.in_progress,
    )
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("report").observe(elapsed)
    return ReportOut(
        funnel_id=funnel.id,
        from_=start,
        to=end,
        window_seconds=funnel.window_seconds,
        count_by=funnel.count_by,
        steps=[StepOut.model_validate(s.as_dict()) for s in steps],
        query_ms=round(elapsed * 1000, 2),
    )


# The CSV columns of a report: one row per step, times to convert flattened.
REPORT_COLUMNS = (
    "index",
    "event",
    "name",
    "visitors",
    "conversion_from_start",
    "conversion_from_previous",
    "dropped",
    "in_progress",
    "median_seconds_from_start",
    *(f"time_to_convert.{f}" for f in TimeToConvertOut.model_fields),
)


# With a comparison, each step's row also holds the change (the step's own columns first).
CHANGE_COLUMNS = tuple(f for f in StepChangeOut.model_fields if f not in REPORT_COLUMNS)


def report_answer(request: Request, report: ReportOut) -> ReportOut | Response:
    """The report as JSON, or with `Accept: text/csv` one row per step."""
    if not wants_csv(request):
        return report
    steps = [s.model_dump() for s in report.steps]
    columns = REPORT_COLUMNS
    if report.comparison is not None:
        for step, change in zip(steps, report.comparison.changes, strict=True):
            step.update(change.model_dump())
        columns += CHANGE_COLUMNS
    return records_response(steps, columns, f"{report.funnel_id}-report")


@router.get(
    "/{funnel_id}/report",
    response_model=ReportOut,
    summary="Funnel report",
    responses=CSV_RESPONSE,
)
async def funnel_report(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    segment: SegmentQuery = None,
    compare: Comparison = CompareParams(None, None, None),
) -> ReportOut | Response:
    """Entities whose funnel events fall in [from, to), counted once each (deepest step).

    Default range: the last 30 days. Conversion is relative to step 1 and to the
    previous step; `dropped` reached the step but not the next; times to convert (seconds)
    are measured on the attempt holding each step, from its step 1 and its previous step.
    With `segment`, only entities in it. With `compare=previous` (the period of the same
    length just before) or `compare_start`/`compare_end`: that period's report too and the
    change per step (`comparison`). With `Accept: text/csv`: one row per step.
    """
    start, end = parse_range(from_, to)
    filters = parse_segment(segment, project.id)
    report = await run_compared(ch, compiler, funnel, start, end, filters, compare)
    return report_answer(request, report)


@router.post(
    "/report",
    response_model=ReportOut,
    summary="Ad-hoc funnel report (not saved)",
    responses=CSV_RESPONSE,
)
async def adhoc_report(
    body: AdHocReportIn,
    request: Request,
    project: ReadProject,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    segment: SegmentQuery = None,
    compare: Comparison = CompareParams(None, None, None),
) -> ReportOut | Response:
    """The same report for a definition sent in the body, over stored events (retroactive).
    The definition is validated exactly as when saving; `id` may be omitted."""
    funnel = parse_definition({"id": "adhoc", **body.funnel}, project.id)
    start, end = parse_range(body.from_, body.to)
    filters = parse_segment(segment, project.id)
    # Used once: compiled without keeping it in the cache saved funnels share.
    once = partial(compiler, cache=False)
    report = await run_compared(ch, once, funnel, start, end, filters, compare)
    return report_answer(request, report)


class TrendPointOut(BaseModel):
    bucket: datetime
    entered: int
    converted: int
    conversion: float
    incomplete: bool


TREND_COLUMNS = tuple(TrendPointOut.model_fields)


class TrendOut(BaseModel):
    funnel_id: str
    interval: str
    tz: str
    points: list[TrendPointOut]
    query_ms: float


@router.get(
    "/{funnel_id}/trend",
    response_model=TrendOut,
    summary="Conversion over time",
    responses=CSV_RESPONSE,
)
async def funnel_trend(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    interval: Literal["hour", "day", "week"] = "day",
    tz: Annotated[
        str,
        Query(
            max_length=64,
            description="IANA time zone of the buckets' calendar",
            openapi_examples={"example": {"value": "Europe/Berlin"}},
        ),
    ] = "UTC",
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    segment: SegmentQuery = None,
) -> TrendOut | Response:
    """Entities entered and converted (reached the last step) per hour, day or week
    (weeks start on Monday) of the local calendar in `tz` (default UTC), by entry time: the
    start of the attempt holding each entity's deepest step. A bucket is named by its local
    start with its UTC offset; across a DST change a day lasts 23 or 25 hours. The current
    period, and one reaching past `to`, is marked `incomplete`; buckets nobody entered are
    omitted. With `Accept: text/csv`: one row per bucket."""
    started = time.monotonic()
    start, end = parse_range(from_, to)
    filters = parse_segment(segment, project.id)
    zone = parse_time_zone(tz)
    query = trend_sql(compiler(funnel), funnel.project, start, end, interval, filters, zone)
    # ClickHouse errors become HTTP answers in one place: query_api/errors.py.
    rows = await ch.query_rows(*query)
    points = compute.trend_points(rows, interval, end, datetime.now(UTC), zone)
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("trend").observe(elapsed)
    if wants_csv(request):
        records = [p.as_dict() for p in points]
        return records_response(records, TREND_COLUMNS, f"{funnel.id}-trend")
    return TrendOut(
        funnel_id=funnel.id,
        interval=interval,
        tz=zone,
        points=[TrendPointOut.model_validate(p.as_dict()) for p in points],
        query_ms=round(elapsed * 1000, 2),
    )
