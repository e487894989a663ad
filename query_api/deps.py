"""Dependencies of the query API, declared once as Annotated aliases."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request

from funnel.compiled import CompiledFunnel, compile_funnel
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig, QueryApiSettings
from processor.catalog import FunnelCatalog
from schemas.funnels import FunnelDefinition


# A definition in, the compiled definition the report SQL is built from out.
class FunnelCompiler(Protocol):
    def __call__(self, funnel: FunnelDefinition, *, cache: bool = True) -> CompiledFunnel: ...


def get_clickhouse(request: Request) -> ClickHouse:
    ch: ClickHouse = request.app.state.clickhouse
    return ch


def get_catalog(request: Request) -> FunnelCatalog:
    catalog: FunnelCatalog = request.app.state.catalog
    return catalog


def get_settings(request: Request) -> QueryApiSettings:
    """The query API's settings, read from the environment once per app."""
    settings: QueryApiSettings | None = getattr(request.app.state, "query_settings", None)
    if settings is None:
        settings = QueryApiSettings()
        request.app.state.query_settings = settings
    return settings


def get_compiler(request: Request) -> FunnelCompiler:
    """Compiles definitions with the configured session gap, the one the processor's
    sessionizer and live fold use, so reports split sessions where they do."""
    gap_ms = get_settings(request).session_gap_seconds * 1000
    return partial(compile_funnel, session_gap_ms=gap_ms)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


def read_project(request: Request) -> Project:
    config: ProjectConfig = request.app.state.project_config
    key = _bearer(request)
    if not key:
        raise HTTPException(
            401, {"error": "missing_read_key", "message": "send Authorization: Bearer <read key>"}
        )
    project = config.by_read_key(key)
    if project is None:
        raise HTTPException(401, {"error": "invalid_read_key", "message": "unknown read key"})
    return project


def admin_project(request: Request) -> Project:
    """The project an admin key belongs to: funnel definitions, keys, erasure."""
    config: ProjectConfig = request.app.state.project_config
    key = _bearer(request)
    if not key:
        raise HTTPException(
            401, {"error": "missing_admin_key", "message": "send Authorization: Bearer <admin key>"}
        )
    project = config.by_admin_key(key)
    if project is None:
        raise HTTPException(401, {"error": "invalid_admin_key", "message": "unknown admin key"})
    return project


ClickHouseDep = Annotated[ClickHouse, Depends(get_clickhouse)]
CatalogDep = Annotated[FunnelCatalog, Depends(get_catalog)]
ReadProject = Annotated[Project, Depends(read_project)]
AdminProject = Annotated[Project, Depends(admin_project)]
SettingsDep = Annotated[QueryApiSettings, Depends(get_settings)]
CompilerDep = Annotated[FunnelCompiler, Depends(get_compiler)]
