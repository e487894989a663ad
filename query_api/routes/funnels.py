"""Funnel definitions and their live stages (reports: query_api/routes/reports.py)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import ValidationError

from funnelstream import metrics
from query_api import compute, funnel_store
from query_api.deps import CatalogDep, ClickHouseDep, ReadProject
from schemas.funnels import FunnelDefinition, validate_funnel

router = APIRouter(prefix="/v1/funnels", tags=["funnels"])


def parse_definition(body: dict[str, Any], project: str) -> FunnelDefinition:
    """A definition from a request body, validated; 400 with a stable error code if not."""
    try:
        funnel = FunnelDefinition.model_validate({**body, "project": project})
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
    return funnel


def get_funnel(catalog: CatalogDep, project: str, funnel_id: str) -> FunnelDefinition:
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
    """Funnels using options the live stage machine cannot hold yet (exclusions, per-step
    windows, `count_by` other than visitor) are saved and reported from raw events, but
    get no live state: `live` is false in the answer and `/live` answers 409."""
    funnel = parse_definition(body, project.id)
    await funnel_store.save(ch, funnel)
    catalog.upsert(funnel)
    return {**funnel.model_dump(), "live": funnel.live_unsupported() is None}


@router.get("/{funnel_id}/live", summary="Visitors at each stage now (processor state)")
async def live_stages(
    funnel_id: str, project: ReadProject, catalog: CatalogDep, ch: ClickHouseDep
) -> dict[str, Any]:
    started = time.monotonic()
    funnel = get_funnel(catalog, project.id, funnel_id)
    reason = funnel.live_unsupported()
    if reason is not None:
        raise HTTPException(
            409,
            {"error": "live_not_supported", "message": f"no live state for funnels with {reason}"},
        )
    rows = await ch.query_rows(
        "SELECT level, count() FROM funnel_state FINAL "
        "WHERE project_id = {p:String} AND funnel_id = {f:String} GROUP BY level",
        {"p": project.id, "f": funnel.id},
    )
    at_level = {int(level): int(count) for level, count in rows}
    reached = compute.reached_per_step(at_level, len(funnel.steps))
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("live").observe(elapsed)
    stages = [
        {"index": k, "event": s.label(), "at_stage": at_level.get(k + 1, 0), "reached": reached[k]}
        for k, s in enumerate(funnel.steps)
    ]
    return {"funnel_id": funnel.id, "stages": stages, "query_ms": round(elapsed * 1000, 2)}
