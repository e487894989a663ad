"""Funnel definitions (reports: query_api/routes/reports.py, live: query_api/routes/live.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import ValidationError

from funnelstream.http_errors import error_responses
from processor.catalog import FunnelCatalog
from query_api import funnel_store
from query_api.deps import CatalogDep, ClickHouseDep, ReadProject, SettingsDep
from schemas.funnels import FunnelDefinition, validate_funnel
from schemas.properties import json_problem

router = APIRouter(
    prefix="/v1/funnels", tags=["funnels"], responses=error_responses(400, 401, 409, 503)
)


def parse_definition(body: dict[str, Any], project: str) -> FunnelDefinition:
    """A definition from a request body, validated; 400 with a stable error code if not."""
    # Rules flatten filter values with orjson: what it cannot hold is refused by name first.
    unkeepable = json_problem(body, "")
    if unkeepable is not None:
        raise HTTPException(
            400,
            {"error": unkeepable.code, "field": unkeepable.path, "message": unkeepable.message},
        )
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
    """Every funnel of the project: `status` "active", or "quarantined" for a stored
    definition that no longer validates (with the rule's `code` and a `reason`); save a
    corrected definition under the same id to replace it."""
    active = [{**f.model_dump(), "status": "active"} for f in catalog.for_project(project.id)]
    quarantined = [
        {
            "id": q.funnel_id,
            "project": q.project,
            "status": "quarantined",
            "code": q.code,
            "reason": q.reason,
        }
        for q in catalog.quarantined(project.id)
    ]
    return active + quarantined


def check_funnel_limit(catalog: FunnelCatalog, funnel: FunnelDefinition, limit: int) -> None:
    """One more funnel than the limit is refused; replacing an existing id never is."""
    existing = catalog.for_project(funnel.project)
    if len(existing) < limit or any(f.id == funnel.id for f in existing):
        return
    raise HTTPException(
        409,
        {
            "error": "funnel_limit_reached",
            "field": "id",
            "message": f"a project holds at most {limit} funnels (max_funnels_per_project);"
            " replace or delete one",
        },
    )


@router.post("", status_code=201, summary="Save a funnel (advanced live from now on)")
async def save_funnel(
    body: dict[str, Any],
    project: ReadProject,
    catalog: CatalogDep,
    ch: ClickHouseDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Saves (or replaces) a definition. The processor keeps live state for every option,
    built from the stored events when the funnel is saved: `live` is always true."""
    funnel = parse_definition(body, project.id)
    check_funnel_limit(catalog, funnel, settings.max_funnels_per_project)
    await funnel_store.save(ch, funnel)
    catalog.upsert(funnel)
    return {**funnel.model_dump(), "live": True}
