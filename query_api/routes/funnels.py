"""Funnel definitions (reports: query_api/routes/reports.py, live: query_api/routes/live.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import ValidationError

from query_api import funnel_store
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
    """Saves (or replaces) a definition. The processor keeps live state for every option,
    built from the stored events when the funnel is saved: `live` is always true."""
    funnel = parse_definition(body, project.id)
    await funnel_store.save(ch, funnel)
    catalog.upsert(funnel)
    return {**funnel.model_dump(), "live": True}
