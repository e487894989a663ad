"""Which definition a report or live route reads: the current version (the catalog's),
an archived funnel's last, or a given `version` (reports only: live state is kept for the
current version alone)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ProjectConfig
from processor.catalog import FunnelCatalog
from query_api import funnel_store
from query_api.deps import CatalogDep, ClickHouseDep, ReadProject
from query_api.funnel_store import StoredVersion, config_funnel
from schemas.funnels import FunnelDefinition


def not_found(funnel_id: str) -> HTTPException:
    return HTTPException(404, {"error": "funnel_not_found", "message": funnel_id})


async def live_funnel(
    catalog: FunnelCatalog, ch: ClickHouse, project: str, funnel_id: str
) -> FunnelDefinition:
    """The funnel's current version, for the live routes; an archived funnel has no live
    state to read (404 `funnel_archived`), its reports stay queryable."""
    funnel = catalog.get(project, funnel_id)
    if funnel is not None:
        return funnel
    stored = await funnel_store.latest(ch, project, funnel_id)
    if stored and stored[0].archived_at is not None:
        raise HTTPException(
            404,
            {
                "error": "funnel_archived",
                "message": f"{funnel_id} was archived at {stored[0].archived_at.isoformat()}:"
                " the processor no longer advances it; its reports stay queryable",
            },
        )
    raise not_found(funnel_id)


def _stored_definition(stored: StoredVersion) -> FunnelDefinition:
    parsed = funnel_store.parse_stored(stored.definition)
    if isinstance(parsed, FunnelDefinition):
        return parsed
    code, reason = parsed
    raise HTTPException(
        409,
        {
            "error": "funnel_quarantined",
            "message": f"version {stored.version} no longer validates ({code}: {reason});"
            " replace it with PUT",
        },
    )


async def report_funnel(
    request: Request,
    catalog: FunnelCatalog,
    ch: ClickHouse,
    project: str,
    funnel_id: str,
    version: int | None,
) -> FunnelDefinition:
    """The definition a report computes with: `version`'s, or the current one (an
    archived funnel's last). Reports read stored events, so any version's is exact."""
    config: ProjectConfig = request.app.state.project_config
    if version is None:
        current = catalog.get(project, funnel_id)
        if current is not None:
            return current
        # Not advanced live: archived, or quarantined; its history is still there.
        stored = await funnel_store.latest(ch, project, funnel_id)
        if not stored or config_funnel(config, project, funnel_id) is not None:
            raise not_found(funnel_id)
        return _stored_definition(stored[0])
    if config_funnel(config, project, funnel_id) is not None:
        raise HTTPException(
            400,
            {
                "error": "funnel_has_no_versions",
                "field": "version",
                "message": f"{funnel_id} is defined in the config file: it has no stored"
                " versions; leave out `version`",
            },
        )
    found = [v for v in await funnel_store.versions(ch, project, funnel_id) if v.version == version]
    if not found:
        raise HTTPException(
            404,
            {
                "error": "version_not_found",
                "field": "version",
                "message": f"{funnel_id} has no version {version}"
                f" (GET /v1/funnels/{funnel_id}/versions lists them)",
            },
        )
    return _stored_definition(found[0])


async def _report_funnel(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    catalog: CatalogDep,
    ch: ClickHouseDep,
    version: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**32 - 1,
            description="Compute with this saved version's definition (GET"
            " /v1/funnels/{id}/versions lists them); default: the current one",
        ),
    ] = None,
) -> FunnelDefinition:
    return await report_funnel(request, catalog, ch, project.id, funnel_id, version)


ReportFunnel = Annotated[FunnelDefinition, Depends(_report_funnel)]


async def _live_funnel(
    funnel_id: str,
    project: ReadProject,
    catalog: CatalogDep,
    ch: ClickHouseDep,
    version: Annotated[
        str | None,
        Query(
            description="Not accepted: live state is kept for the current version only;"
            " an earlier version's numbers come from the report routes"
        ),
    ] = None,
) -> FunnelDefinition:
    if version is not None:
        raise HTTPException(
            400,
            {
                "error": "version_not_live",
                "field": "version",
                "message": "live state is kept for the current version only; ask a report"
                f" route (GET /v1/funnels/{funnel_id}/report?version=…) for an earlier one",
            },
        )
    return await live_funnel(catalog, ch, project.id, funnel_id)


LiveFunnel = Annotated[FunnelDefinition, Depends(_live_funnel)]
