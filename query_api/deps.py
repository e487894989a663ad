"""Dependencies of the query API, declared once as Annotated aliases."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request

from funnel.compiled import CompiledFunnel, compile_funnel
from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, QueryApiSettings
from funnelstream.key_store import KeyStore
from funnelstream.keys import Scope, WrongScope
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


def get_key_store(request: Request) -> KeyStore:
    """The app's keys (funnelstream/key_store.py). An app assembled without one (a test
    of a few routes) gets the config file's keys alone."""
    store: KeyStore | None = getattr(request.app.state, "keys", None)
    if store is None:
        store = KeyStore.config_only(request.app.state.project_config)
        request.app.state.keys = store
    return store


def _project_for(request: Request, needed: Scope) -> Project:
    """The project the bearer key opens for a route needing `needed`: 401 without a key
    or with an unknown one, 403 for a valid key of another scope."""
    key = _bearer(request)
    if not key:
        metrics.AUTH_REFUSED.labels("missing_key").inc()
        raise HTTPException(
            401,
            {
                "error": f"missing_{needed}_key",
                "field": "authorization",
                "message": f"send Authorization: Bearer <{needed} key>",
            },
        )
    found = get_key_store(request).authorize(key, needed)
    if found is None:
        metrics.AUTH_REFUSED.labels("unknown_key").inc()
        raise HTTPException(
            401,
            {
                "error": f"invalid_{needed}_key",
                "field": "authorization",
                "message": f"unknown {needed} key",
            },
        )
    if isinstance(found, WrongScope):
        metrics.AUTH_REFUSED.labels("insufficient_scope").inc()
        raise HTTPException(
            403,
            {
                "error": "insufficient_scope",
                "field": "authorization",
                "required_scope": needed,
                "message": f"this route needs a key of scope {needed}; the key sent has scope"
                f" {found.held}",
            },
        )
    return found


def read_project(request: Request) -> Project:
    """The project a read key belongs to: the query routes."""
    return _project_for(request, "read")


def admin_project(request: Request) -> Project:
    """The project an admin key belongs to: funnel definitions, keys, erasure."""
    return _project_for(request, "admin")


ClickHouseDep = Annotated[ClickHouse, Depends(get_clickhouse)]
CatalogDep = Annotated[FunnelCatalog, Depends(get_catalog)]
ReadProject = Annotated[Project, Depends(read_project)]
AdminProject = Annotated[Project, Depends(admin_project)]
KeyStoreDep = Annotated[KeyStore, Depends(get_key_store)]
SettingsDep = Annotated[QueryApiSettings, Depends(get_settings)]
CompilerDep = Annotated[FunnelCompiler, Depends(get_compiler)]
