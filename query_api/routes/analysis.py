"""Deeper analyses of a saved funnel over raw events: breakdowns with attribution,
drop-off lists and what dropped visitors did next, the time-to-convert histogram and the
open funnel. All read the same per-entity evaluation as the report."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel

from funnelstream import metrics
from funnelstream.http_errors import keyed_route_errors
from query_api import compute
from query_api.csv_answer import CSV_RESPONSE, records_response, wants_csv
from query_api.deps import ClickHouseDep, CompilerDep, ReadProject
from query_api.routes.funnel_lookup import ReportFunnel
from query_api.routes.reports import From, To, parse_range
from query_api.routes.segments import SegmentQuery, parse_segment
from query_api.sql.analysis import (
    SESSION_FIELDS,
    Breakdown,
    breakdown_sql,
    dropped_sql,
    histogram_sql,
    next_events_sql,
    open_funnel_sql,
)
from schemas.funnels import FunnelDefinition

router = APIRouter(
    prefix="/v1/funnels", tags=["funnel analysis"], responses=keyed_route_errors(404, 409, 503)
)


async def _rows(ch: ClickHouseDep, query: tuple[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
    # ClickHouse errors become HTTP answers in one place: query_api/errors.py.
    return await ch.query_rows(*query)


Out = TypeVar("Out", bound=BaseModel)


def _answer(
    request: Request,
    out: Out,
    records: list[dict[str, Any]],
    columns: tuple[str, ...],
    name: str,
) -> Out | Response:
    """`out` as JSON, or with `Accept: text/csv` one row per record."""
    if not wants_csv(request):
        return out
    return records_response(records, columns, f"{getattr(out, 'funnel_id', 'funnel')}-{name}")


def _step(funnel: FunnelDefinition, step: int, field: str, last_ok: bool = True) -> int:
    top = len(funnel.steps) - (1 if last_ok else 2)
    if not 0 <= step <= top:
        raise HTTPException(
            400,
            {"error": "invalid_step", "field": field, "message": f"step must be 0 to {top}"},
        )
    return step


class BreakdownStepOut(BaseModel):
    index: int
    visitors: int
    conversion_from_start: float
    conversion_from_previous: float


class BreakdownGroupOut(BaseModel):
    value: str
    other: bool
    steps: list[BreakdownStepOut]


class BreakdownOut(BaseModel):
    funnel_id: str
    property: str
    source: str
    attribution: str
    step: int | None
    groups: list[BreakdownGroupOut]
    query_ms: float


@router.get(
    "/{funnel_id}/breakdown",
    response_model=BreakdownOut,
    summary="Breakdown",
    responses=CSV_RESPONSE,
)
async def funnel_breakdown(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    property: Annotated[str, Query(min_length=1, max_length=200)],
    source: Literal["event", "session"] = "event",
    attribution: Literal["first_touch", "last_touch", "step"] = "first_touch",
    step: Annotated[int, Query(description="0-based; with attribution=step")] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    from_: From = None,
    to: To = None,
    segment: SegmentQuery = None,
) -> BreakdownOut | Response:
    """The report's step counts per value of an event property (or a session property:
    entry_url, referrer, utm_source, utm_medium, utm_campaign, device, browser, os, country) of one
    event per entity, chosen by `attribution`: `first_touch` (step 1 of the attempt that
    holds the entity's deepest step), `last_touch` (the event that reached that step) or
    `step` (the event holding step `step`; '' if the entity has none). The `limit` values
    with most entities are listed; the rest are summed into one group with `other: true`.
    '' is the value of a missing property."""
    started = time.monotonic()
    if source == "session" and property not in SESSION_FIELDS:
        raise HTTPException(
            400,
            {
                "error": "invalid_breakdown",
                "field": "property",
                "message": f"session properties: {', '.join(SESSION_FIELDS)}",
            },
        )
    if attribution == "step":
        _step(funnel, step, "step")
    start, end = parse_range(from_, to)
    by = Breakdown(property, source, attribution, step, limit)
    filters = parse_segment(segment, project.id)
    query = breakdown_sql(compiler(funnel), funnel.project, start, end, by, filters)
    rows = await _rows(ch, query)
    groups = compute.breakdown_groups(rows, len(funnel.steps))
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("breakdown").observe(elapsed)
    out = BreakdownOut(
        funnel_id=funnel.id,
        property=property,
        source=source,
        attribution=attribution,
        step=step if attribution == "step" else None,
        groups=[BreakdownGroupOut.model_validate(g.as_dict()) for g in groups],
        query_ms=round(elapsed * 1000, 2),
    )
    return _answer(
        request,
        out,
        [
            {"value": g.value, "other": g.other, **step.model_dump()}
            for g in out.groups
            for step in g.steps
        ],
        ("value", "other", *BreakdownStepOut.model_fields),
        "breakdown",
    )


class DroppedVisitorOut(BaseModel):
    visitor_id: str
    reached_at: datetime
    attempt_started_at: datetime


class DroppedOut(BaseModel):
    funnel_id: str
    step: int
    visitors: list[DroppedVisitorOut]
    next_after: str | None
    query_ms: float


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@router.get(
    "/{funnel_id}/dropped",
    response_model=DroppedOut,
    summary="Who dropped at a step",
    responses=CSV_RESPONSE,
)
async def funnel_dropped(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    step: Annotated[int, Query(description="0-based, not the last step")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str, Query(description="cursor: `next_after` of the previous page")] = "",
    from_: From = None,
    to: To = None,
    segment: SegmentQuery = None,
) -> DroppedOut | Response:
    """Entities (visitors, or users) whose deepest step is `step` and whose attempt can no
    longer take the next one (dropped; those still in their window are in progress and not
    listed), ordered by id, `limit` per page. Pass `next_after` as `after` for the next
    page; it is null on the last page."""
    started = time.monotonic()
    _step(funnel, step, "step", last_ok=False)
    start, end = parse_range(from_, to)
    now = min(datetime.now(UTC), end)
    filters = parse_segment(segment, project.id)
    query = dropped_sql(
        compiler(funnel), funnel.project, start, end, now, step, limit, after, filters
    )
    rows = await _rows(ch, query)
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("dropped").observe(elapsed)
    out = DroppedOut(
        funnel_id=funnel.id,
        step=step,
        visitors=[
            DroppedVisitorOut(visitor_id=v, reached_at=_at(r), attempt_started_at=_at(s))
            for v, r, s in rows
        ],
        next_after=str(rows[-1][0]) if len(rows) == limit else None,
        query_ms=round(elapsed * 1000, 2),
    )
    return _answer(
        request,
        out,
        [v.model_dump() for v in out.visitors],
        tuple(DroppedVisitorOut.model_fields),
        "dropped",
    )


class NextEventOut(BaseModel):
    event: str
    visitors: int


class NextEventsOut(BaseModel):
    funnel_id: str
    step: int
    next_events: list[NextEventOut]
    query_ms: float


@router.get(
    "/{funnel_id}/dropped/next-events",
    response_model=NextEventsOut,
    summary="What dropped visitors did next",
    responses=CSV_RESPONSE,
)
async def funnel_next_events(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    step: Annotated[int, Query(description="0-based, not the last step")],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    from_: From = None,
    to: To = None,
    segment: SegmentQuery = None,
) -> NextEventsOut | Response:
    """For the entities that dropped at `step`: the first event each sent after reaching
    it (any event name, strictly later, within [from, to)), counted per event name, most
    frequent first. Entities with no later event are not counted."""
    started = time.monotonic()
    _step(funnel, step, "step", last_ok=False)
    start, end = parse_range(from_, to)
    now = min(datetime.now(UTC), end)
    filters = parse_segment(segment, project.id)
    query = next_events_sql(compiler(funnel), funnel.project, start, end, now, step, limit, filters)
    rows = await _rows(ch, query)
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("next_events").observe(elapsed)
    out = NextEventsOut(
        funnel_id=funnel.id,
        step=step,
        next_events=[NextEventOut(event=e, visitors=int(n)) for e, n in rows],
        query_ms=round(elapsed * 1000, 2),
    )
    return _answer(
        request,
        out,
        [e.model_dump() for e in out.next_events],
        tuple(NextEventOut.model_fields),
        "next-events",
    )


class HistogramBinOut(BaseModel):
    from_seconds: float
    to_seconds: float
    attempts: int


class HistogramOut(BaseModel):
    funnel_id: str
    step: int
    bins: list[HistogramBinOut]
    query_ms: float


@router.get(
    "/{funnel_id}/time-to-convert",
    response_model=HistogramOut,
    summary="Time-to-convert histogram",
    responses=CSV_RESPONSE,
)
async def funnel_time_to_convert(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    step: Annotated[int | None, Query(description="0-based, > 0; default: the last")] = None,
    bins: Annotated[int, Query(ge=1, le=200)] = 20,
    from_: From = None,
    to: To = None,
    segment: SegmentQuery = None,
) -> HistogramOut | Response:
    """Times from step 1 to `step` of the attempts holding `step` (the same attempts as
    the report's `time_to_convert`), in `bins` equal bins from 0 s to just past the
    longest; each bin is [from_seconds, to_seconds)."""
    started = time.monotonic()
    k = len(funnel.steps) - 1 if step is None else step
    if not 1 <= k < len(funnel.steps):
        raise HTTPException(
            400,
            {
                "error": "invalid_step",
                "field": "step",
                "message": f"step must be 1 to {len(funnel.steps) - 1}",
            },
        )
    start, end = parse_range(from_, to)
    filters = parse_segment(segment, project.id)
    query = histogram_sql(compiler(funnel), funnel.project, start, end, k, bins, filters)
    rows = await _rows(ch, query)
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("histogram").observe(elapsed)
    out = HistogramOut(
        funnel_id=funnel.id,
        step=k,
        bins=[
            HistogramBinOut.model_validate(b.as_dict()) for b in compute.histogram_bins(rows, bins)
        ],
        query_ms=round(elapsed * 1000, 2),
    )
    return _answer(
        request,
        out,
        [b.model_dump() for b in out.bins],
        tuple(HistogramBinOut.model_fields),
        "time-to-convert",
    )


class OpenStepOut(BaseModel):
    index: int
    event: str
    entered: int
    continued: int
    continuation: float


class OpenFunnelOut(BaseModel):
    funnel_id: str
    steps: list[OpenStepOut]
    query_ms: float


@router.get(
    "/{funnel_id}/open",
    response_model=OpenFunnelOut,
    summary="Open funnel",
    responses=CSV_RESPONSE,
)
async def open_funnel(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: ReportFunnel,
    ch: ClickHouseDep,
    compiler: CompilerDep,
    from_: From = None,
    to: To = None,
) -> OpenFunnelOut | Response:
    """Entry at any step (GA4's open funnel): per step, entities that sent a matching
    event (`entered`), and of those, entities that followed one of those events with an
    event matching the next step, strictly later and within the window (and the next
    step's `within_seconds`, if shorter): `continued`. Exclusions do not apply."""
    started = time.monotonic()
    start, end = parse_range(from_, to)
    rows = await _rows(ch, open_funnel_sql(compiler(funnel), funnel.project, start, end))
    by_step = {int(s): (int(e), int(c)) for s, e, c in rows}
    steps = []
    for k, s in enumerate(funnel.steps):
        entered, continued = by_step.get(k + 1, (0, 0))
        steps.append(
            OpenStepOut(
                index=k,
                event=s.label(),
                entered=entered,
                continued=continued,
                continuation=round(continued / entered, 6) if entered else 0.0,
            )
        )
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("open").observe(elapsed)
    out = OpenFunnelOut(funnel_id=funnel.id, steps=steps, query_ms=round(elapsed * 1000, 2))
    records = [step.model_dump() for step in out.steps]
    return _answer(request, out, records, tuple(OpenStepOut.model_fields), "open")
