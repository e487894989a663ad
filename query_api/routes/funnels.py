"""Funnel definitions and their versions (reports: query_api/routes/reports.py, live:
query_api/routes/live.py).

Writes take the project's admin key; reads its read key. A funnel of the config file is
read-only here (409 `funnel_read_only`): the file is where it changes. An API funnel is
created (POST), replaced by a new version (PUT), archived (DELETE): every version stays
in `funnel_versions` (query_api/funnel_store.py), so its reports can still be asked for.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import ValidationError

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ProjectConfig
from funnelstream.http_errors import keyed_route_errors
from processor.catalog import FunnelCatalog
from query_api import funnel_store
from query_api.deps import AdminProject, CatalogDep, ClickHouseDep, ReadProject, SettingsDep
from query_api.funnel_store import StoredVersion, config_funnel
from query_api.funnel_views import FunnelOut, VersionOut, as_saved, config_entry, stored_entry
from query_api.routes.funnel_lookup import not_found
from schemas.funnels import FunnelDefinition, validate_funnel
from schemas.properties import json_problem

router = APIRouter(
    prefix="/v1/funnels", tags=["funnels"], responses=keyed_route_errors(404, 409, 503)
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


# -- listing ---------------------------------------------------------------------------


async def project_funnels(
    config: ProjectConfig, catalog: FunnelCatalog, ch: ClickHouse, project: str
) -> list[dict[str, Any]]:
    """Every funnel of the project, config ones first, as listed."""
    failed = {q.funnel_id: q for q in catalog.quarantined(project)}
    from_config = [f for f in config.funnels if f.project == project]
    config_ids = {f.id for f in from_config}
    stored = [s for s in await funnel_store.latest(ch, project) if s.funnel_id not in config_ids]
    return [config_entry(f, failed.get(f.id)) for f in from_config] + [
        stored_entry(s, failed.get(s.funnel_id)) for s in stored
    ]


@router.get("", response_model=list[FunnelOut], summary="List funnels")
async def list_funnels(
    request: Request, project: ReadProject, catalog: CatalogDep, ch: ClickHouseDep
) -> list[dict[str, Any]]:
    """Every funnel of the project, with its definition, `source` ("config": the config
    file's, read-only here; "api": saved through this API), current `version` (null for
    config funnels), `status` and times (`created_at`: version 1 saved, `saved_at`: the
    current version saved, `archived_at`).

    `status`: "active" (advanced live); "archived" (not advanced; reports stay
    queryable; saving the id again makes a new version); "quarantined" (a definition that
    no longer validates or failed in the processor, with the rule's `code` and a `reason`:
    replace it with PUT)."""
    config: ProjectConfig = request.app.state.project_config
    return await project_funnels(config, catalog, ch, project.id)


@router.get("/{funnel_id}", response_model=FunnelOut, summary="One funnel")
async def one_funnel(
    funnel_id: str, request: Request, project: ReadProject, catalog: CatalogDep, ch: ClickHouseDep
) -> dict[str, Any]:
    """The funnel as `GET /v1/funnels` lists it."""
    config: ProjectConfig = request.app.state.project_config
    failed = {q.funnel_id: q for q in catalog.quarantined(project.id)}
    from_config = config_funnel(config, project.id, funnel_id)
    if from_config is not None:
        return config_entry(from_config, failed.get(funnel_id))
    stored = await funnel_store.latest(ch, project.id, funnel_id)
    if not stored:
        raise not_found(funnel_id)
    return stored_entry(stored[0], failed.get(funnel_id))


@router.get(
    "/{funnel_id}/versions", response_model=list[VersionOut], summary="Every version of a funnel"
)
async def funnel_versions(
    funnel_id: str, request: Request, project: ReadProject, ch: ClickHouseDep
) -> list[dict[str, Any]]:
    """Every saved version, oldest first: `version`, `definition` (as saved), `saved_at`,
    and `archived_at` on a version that was archived. A config funnel has one entry,
    `version` null: the config file is where its history is kept."""
    config: ProjectConfig = request.app.state.project_config
    from_config = config_funnel(config, project.id, funnel_id)
    if from_config is not None:
        return [
            {
                "version": None,
                "source": "config",
                "definition": from_config.model_dump(),
                "saved_at": None,
                "archived_at": None,
            }
        ]
    stored = await funnel_store.versions(ch, project.id, funnel_id)
    if not stored:
        raise not_found(funnel_id)
    return [
        {
            "version": v.version,
            "source": "api",
            "definition": as_saved(v.definition),
            "saved_at": v.saved_at,
            "archived_at": v.archived_at,
        }
        for v in stored
    ]


# -- writes (admin key) ----------------------------------------------------------------


def write_lock(request: Request) -> asyncio.Lock:
    """One definition write at a time per app, so version numbers are not handed out
    twice (across split-mode query API replicas see docs/funnels.md)."""
    lock: asyncio.Lock | None = getattr(request.app.state, "funnel_write_lock", None)
    if lock is None:
        lock = request.app.state.funnel_write_lock = asyncio.Lock()
    return lock


WriteLock = Annotated[asyncio.Lock, Depends(write_lock)]


def refuse_config_funnel(config: ProjectConfig, project: str, funnel_id: str) -> None:
    if config_funnel(config, project, funnel_id) is None:
        return
    raise HTTPException(
        409,
        {
            "error": "funnel_read_only",
            "field": "id",
            "message": f"{funnel_id} is defined in the config file: change it there (it is"
            " read-only through the API), or save this definition under another id",
        },
    )


def check_funnel_limit(
    config: ProjectConfig, stored: list[StoredVersion], project: str, limit: int
) -> None:
    """One more active funnel than the limit is refused; archived ones do not count, and
    replacing an active one never is refused (callers check only new or revived ids)."""
    from_config = {f.id for f in config.funnels if f.project == project}
    active = len(from_config) + sum(
        1 for s in stored if not s.archived and s.funnel_id not in from_config
    )
    if active < limit:
        return
    raise HTTPException(
        409,
        {
            "error": "funnel_limit_reached",
            "field": "id",
            "message": f"a project holds at most {limit} funnels (max_funnels_per_project);"
            " replace or archive one",
        },
    )


async def save_version(
    ch: ClickHouse, funnel: FunnelDefinition, current: StoredVersion | None
) -> StoredVersion:
    now = _now()
    saved = StoredVersion(
        funnel.project,
        funnel.id,
        1 if current is None else current.version + 1,
        funnel.model_dump_json(),
        now,
        created_at=now if current is None else current.created_at,
    )
    await funnel_store.write(ch, saved)
    return saved


def _now() -> datetime:
    """Now, as stored (milliseconds), so an answer and a later read agree."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _saved(funnel: FunnelDefinition, saved: StoredVersion) -> dict[str, Any]:
    return {**stored_entry(saved, None), **funnel.model_dump(), "live": True}


@router.post("", status_code=201, response_model=FunnelOut, summary="Create a funnel (admin key)")
async def create_funnel(
    body: dict[str, Any],
    request: Request,
    project: AdminProject,
    catalog: CatalogDep,
    ch: ClickHouseDep,
    settings: SettingsDep,
    lock: WriteLock,
) -> dict[str, Any]:
    """Saves a new funnel as version 1 (an archived id: as its next version). The
    processor keeps live state for every option, built from the stored events when the
    funnel is saved: `live` is always true. An id in use: 409 `funnel_exists` (replace it
    with PUT); a config funnel's id: 409 `funnel_read_only`."""
    funnel = parse_definition(body, project.id)
    config: ProjectConfig = request.app.state.project_config
    refuse_config_funnel(config, project.id, funnel.id)
    async with lock:
        stored = await funnel_store.latest(ch, project.id)
        current = next((s for s in stored if s.funnel_id == funnel.id), None)
        if current is not None and not current.archived:
            raise HTTPException(
                409,
                {
                    "error": "funnel_exists",
                    "field": "id",
                    "message": f"{funnel.id} exists (version {current.version}): replace it"
                    f" with PUT /v1/funnels/{funnel.id}",
                },
            )
        check_funnel_limit(config, stored, project.id, settings.max_funnels_per_project)
        saved = await save_version(ch, funnel, current)
    catalog.upsert(funnel, saved.version)
    return _saved(funnel, saved)


@router.put(
    "/{funnel_id}",
    response_model=FunnelOut,
    summary="Replace a funnel: a new version (admin key)",
)
async def replace_funnel(
    funnel_id: str,
    body: dict[str, Any],
    request: Request,
    project: AdminProject,
    catalog: CatalogDep,
    ch: ClickHouseDep,
    settings: SettingsDep,
    lock: WriteLock,
) -> dict[str, Any]:
    """Saves the definition as the funnel's next version; earlier versions stay, and
    their reports are asked for with `?version=N`. The processor rebuilds the live state
    from the stored events (a bounded backfill). `id` in the body may be left out; if
    given it must be the path's. An archived funnel is revived by this; an unknown id is
    404 (create it with POST)."""
    config: ProjectConfig = request.app.state.project_config
    refuse_config_funnel(config, project.id, funnel_id)
    if "id" in body and body["id"] != funnel_id:
        raise HTTPException(
            400,
            {"error": "id_mismatch", "field": "id", "message": "must be the id in the path"},
        )
    funnel = parse_definition({**body, "id": funnel_id}, project.id)
    async with lock:
        stored = await funnel_store.latest(ch, project.id)
        current = next((s for s in stored if s.funnel_id == funnel_id), None)
        if current is None:
            raise HTTPException(
                404,
                {
                    "error": "funnel_not_found",
                    "message": f"{funnel_id}: no such funnel; create it with POST /v1/funnels",
                },
            )
        if current.archived:
            check_funnel_limit(config, stored, project.id, settings.max_funnels_per_project)
        saved = await save_version(ch, funnel, current)
    catalog.upsert(funnel, saved.version)
    return _saved(funnel, saved)


@router.delete("/{funnel_id}", response_model=FunnelOut, summary="Archive a funnel (admin key)")
async def archive_funnel(
    funnel_id: str,
    request: Request,
    project: AdminProject,
    catalog: CatalogDep,
    ch: ClickHouseDep,
    lock: WriteLock,
) -> dict[str, Any]:
    """The processor stops advancing the funnel and the live routes answer 404
    `funnel_archived`; every version and its reports stay queryable. Saving the id again
    (POST or PUT) makes its next version. Archiving an archived funnel changes nothing."""
    config: ProjectConfig = request.app.state.project_config
    refuse_config_funnel(config, project.id, funnel_id)
    async with lock:
        stored = await funnel_store.latest(ch, project.id, funnel_id)
        if not stored:
            raise not_found(funnel_id)
        current = stored[0]
        if not current.archived:
            current = replace(current, archived_at=_now())
            await funnel_store.write(ch, current)
    catalog.remove(project.id, funnel_id)
    return stored_entry(current, None)
