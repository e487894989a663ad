"""Funnel definitions and reports."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ValidationError

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouseUnavailable
from query_api import compute, funnel_store
from query_api.deps import CatalogDep, ClickHouseDep, ReadProject
from query_api.sql.funnel_report import report_sql
from schemas.funnels import FunnelDefinition, validate_funnel

router = APIRouter(prefix="/v1/funnels", tags=["funnels"])


class StepOut(BaseModel):
    index: int
    event: str
    name: str | None
    visitors: int
    conversion_from_start: float
    conversion_from_previous: float
    dropped: int
    median_seconds_from_start: float | None


class ReportOut(BaseModel):
    funnel_id: str
    from_: datetime
    to: datetime
    window_seconds: int
    steps: list[StepOut]
    query_ms: float


def _parse_time(value: str | None, default: datetime, name: str) -> datetime:
    if value is None:
        return default
    text = value.strip()
    try:
        if text.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise HTTPException(
            400, {"error": "invalid_time", "field": name, "message": "ISO-8601 or epoch ms"}
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _funnel(catalog: CatalogDep, project: str, funnel_id: str) -> FunnelDefinition:
    funnel = catalog.get(project, funnel_id)
    if funnel is None:
        raise HTTPException(404, {"error": "funnel_not_found", "message": funnel_id})
    return funnel


@router.get("", summary="List funnels")
async def list_funnels(project: ReadProject, catalog: CatalogDep) -> list[dict[str, Any]]:
    return [f.model_dump() for f in catalog.for_project(project.id)]


@router.post("", status_code=201, summary="Save a funnel (advanced live from now on)")
async def save_funnel(
    body: dict[str, Any], project: ReadProject, catalog: CatalogDep, ch: ClickHouseDep
) -> dict[str, Any]:
    body = {**body, "project": project.id}
    try:
        funnel = FunnelDefinition.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HTTPException(
            400,
            {
                "error": "invalid_funnel",
                "field": ".".join(str(p) for p in first["loc"]),
                "message": first["msg"],
            },
        ) from exc
    problems = validate_funnel(funnel)
    if problems:
        p = problems[0]
        raise HTTPException(400, {"error": p.code, "field": p.field, "message": p.message})
    await funnel_store.save(ch, funnel)
    catalog.upsert(funnel)
    return funnel.model_dump()


@router.get("/{funnel_id}/report", response_model=ReportOut, summary="Funnel report")
async def funnel_report(
    funnel_id: str,
    project: ReadProject,
    catalog: CatalogDep,
    ch: ClickHouseDep,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
) -> ReportOut:
    """Visitors whose funnel events fall in [from, to), counted once each (deepest step).

    Default range: the last 30 days. Conversion is relative to step 1 and to the
    previous step; `dropped` reached the step but not the next; the median time is from
    the chain's step 1 to this step, in seconds.
    """
    started = time.monotonic()
    funnel = _funnel(catalog, project.id, funnel_id)
    now = datetime.now(UTC)
    end = _parse_time(to, now + timedelta(seconds=1), "to")
    start = _parse_time(from_, end - timedelta(days=30), "from")
    if start >= end:
        raise HTTPException(
            400, {"error": "invalid_range", "field": "from", "message": "from must be before to"}
        )
    sql, params = report_sql(funnel, project.id, start, end)
    try:
        rows = await ch.query_rows(sql, params)
    except ClickHouseUnavailable as exc:
        raise HTTPException(503, {"error": "clickhouse_unavailable", "message": str(exc)}) from exc
    n = len(funnel.steps)
    reached = [0] * n
    medians: list[float | None] = [None] * n
    for step, visitors, median_ms in rows:
        reached[int(step) - 1] = int(visitors)
        medians[int(step) - 1] = float(median_ms)
    steps = compute.build_steps(
        [s.event for s in funnel.steps], [s.name for s in funnel.steps], reached, medians
    )
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("report").observe(elapsed)
    return ReportOut(
        funnel_id=funnel.id,
        from_=start,
        to=end,
        window_seconds=funnel.window_seconds,
        steps=[StepOut(**s.as_dict()) for s in steps],  # type: ignore[arg-type]
        query_ms=round(elapsed * 1000, 2),
    )


@router.get("/{funnel_id}/live", summary="Visitors at each stage now (processor state)")
async def live_stages(
    funnel_id: str, project: ReadProject, catalog: CatalogDep, ch: ClickHouseDep
) -> dict[str, Any]:
    started = time.monotonic()
    funnel = _funnel(catalog, project.id, funnel_id)
    rows = await ch.query_rows(
        "SELECT level, count() FROM funnel_state FINAL "
        "WHERE project_id = {p:String} AND funnel_id = {f:String} GROUP BY level",
        {"p": project.id, "f": funnel.id},
    )
    at_level = {int(level): int(count) for level, count in rows}
    reached = compute.reached_per_step(at_level, len(funnel.steps))
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("live").observe(elapsed)
    return {
        "funnel_id": funnel.id,
        "stages": [
            {
                "index": k,
                "event": s.event,
                "at_stage": at_level.get(k + 1, 0),
                "reached": reached[k],
            }
            for k, s in enumerate(funnel.steps)
        ],
        "query_ms": round(elapsed * 1000, 2),
    }
