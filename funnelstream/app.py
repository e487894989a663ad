"""Assembles the HTTP app for a deployment: any of ingest, processor and query API.

`funnelstream serve` runs all three in one process on one port (embedded log and
ClickHouse); split mode runs each part in its own process against Kafka and a server.

Every background task runs under a supervisor (funnelstream/supervise.py): a crash is
logged, shown by `/readyz` and `/healthz`, and the task restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from funnelstream import metrics
from funnelstream.backoff import BackoffPolicy
from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable, migrate
from funnelstream.config import (
    CommonSettings,
    IngestSettings,
    ProcessorSettings,
    QueryApiSettings,
    load_config,
)
from funnelstream.http_errors import install_error_envelope
from funnelstream.log import Log, LogUnavailable
from funnelstream.log.embedded import EmbeddedLog
from funnelstream.supervise import Components, Supervisor
from ingest.routes import router as ingest_router
from ingest.service import IngestService
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from processor.transform import Timing
from query_api import funnel_store
from query_api.errors import install_error_handlers
from query_api.openapi import install_query_openapi
from query_api.routes.analysis import router as analysis_router
from query_api.routes.funnels import router as funnels_router
from query_api.routes.live import router as live_router
from query_api.routes.reports import router as reports_router
from query_api.routes.stats import router as stats_router

log = logging.getLogger(__name__)

ROLES = frozenset({"ingest", "processor", "query"})
# Split-mode processors and query APIs pick up funnels saved by another process.
CATALOG_REFRESH_SECONDS = 5.0
RETENTION_CHECK_SECONDS = 3600.0


def open_log(settings: CommonSettings) -> Log:
    if settings.log_backend == "kafka":
        from funnelstream.log.kafka import KafkaLog

        return KafkaLog(settings.kafka_bootstrap)
    from funnelstream.log.embedded import EmbeddedLog

    return EmbeddedLog(settings.data_dir / "log", default_partitions=settings.partitions)


def processor_config(settings: ProcessorSettings) -> ProcessorConfig:
    return ProcessorConfig(
        topic=settings.topic,
        group=settings.group,
        timing=Timing(
            session_gap_ms=settings.session_gap_seconds * 1000,
            lateness_ms=settings.lateness_seconds * 1000,
        ),
        batch_max_messages=settings.batch_max_messages,
        batch_max_seconds=settings.batch_max_seconds,
        retry_initial_seconds=settings.retry_initial_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        backfill_chunk_visitors=settings.backfill_chunk_visitors,
    )


def build_app(
    ingest_settings: IngestSettings,
    processor_settings: ProcessorSettings,
    roles: frozenset[str] = ROLES,
) -> FastAPI:
    settings: CommonSettings = ingest_settings
    project_config = load_config(settings)
    components = Components()
    policy = BackoffPolicy(
        processor_settings.retry_initial_seconds, processor_settings.retry_max_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The query API alone reads ClickHouse only; it never touches the log.
        backend = open_log(settings) if roles & {"ingest", "processor"} else None
        supervisor = Supervisor(components, policy, asyncio.Event())
        ch: ClickHouse | None = None
        producer = None
        try:
            if backend is not None:
                await backend.ensure_topic(settings.topic, settings.partitions)
            if roles & {"processor", "query"}:
                ch = ClickHouse(settings.resolved_clickhouse_dsn())
                await asyncio.to_thread(migrate, ch)
                loaded = await asyncio.to_thread(funnel_store.load_all_sync, ch, project_config)
                app.state.clickhouse = ch
                app.state.catalog = FunnelCatalog(loaded.funnels, loaded.quarantined)
                if roles != ROLES:
                    refresh = _CatalogRefresh(app, ch)
                    components.add_probe("clickhouse", refresh.problem)
                    supervisor.start("catalog_refresh", refresh.run)
            if "ingest" in roles:
                assert backend is not None
                producer = backend.producer(settings.topic)
                await producer.start()
                app.state.ingest = service = IngestService(
                    ingest_settings, project_config, producer
                )
                components.add_probe("log", lambda: service.log_problem)
            if isinstance(backend, EmbeddedLog):
                supervisor.start("log_retention", partial(_enforce_retention, backend))
            if "processor" in roles:
                assert ch is not None and backend is not None
                log_backend, clickhouse = backend, ch

                def run_processor(stop: asyncio.Event) -> Awaitable[None]:
                    # A fresh processor for every (re)start: a crashed one may hold visitor
                    # state applied past what was written, which must be reloaded instead.
                    processor = Processor(
                        log_backend,
                        clickhouse,
                        app.state.catalog,
                        processor_config(processor_settings),
                    )
                    app.state.processor = processor
                    return processor.run(stop)

                for part in ("clickhouse", "log"):
                    components.add_probe(part, partial(_processor_problem, app, part))
                supervisor.start("processor", run_processor)
            yield
        finally:
            await supervisor.shutdown()
            if producer is not None:
                await producer.stop()
            if backend is not None:
                await backend.close()
            if ch is not None:
                ch.close()

    app = FastAPI(
        title="Funnelstream",
        version="0.1.0",
        description="Event ingest, funnel reports and live funnel stages.",
        lifespan=lifespan,
    )
    app.state.project_config = project_config
    if "query" in roles:
        # Read and validated now, like every service's settings: a bad value stops the
        # start, not the first request that needs it (query_api/deps.py).
        app.state.query_settings = QueryApiSettings()
    app.state.components = components
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=False,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "Content-Encoding"],
        # The snippet reads Retry-After on 429/503 from cross-origin pages.
        expose_headers=["Retry-After"],
        max_age=86400,
    )

    install_error_envelope(app)

    if "ingest" in roles:
        app.include_router(ingest_router)
    if "query" in roles:
        install_error_handlers(app)
        install_query_openapi(app)
        app.include_router(funnels_router)
        app.include_router(reports_router)
        app.include_router(live_router)
        app.include_router(analysis_router)
        app.include_router(stats_router)

    @app.get(
        "/readyz",
        tags=["ops"],
        responses={503: {"description": "Failing: `failed` names each component and why"}},
    )
    async def readyz() -> JSONResponse:
        """200 when every component is ready; 503 naming each failed one and why."""
        failed = components.failing()
        if failed:
            return JSONResponse({"status": "failing", "failed": failed}, status_code=503)
        return JSONResponse({"status": "ready", "components": components.names()})

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> dict[str, Any]:
        # Liveness: always 200 while the process answers, but never "ok" over a failure.
        failed = components.failing()
        out: dict[str, Any] = {"status": "degraded" if failed else "ok", "roles": sorted(roles)}
        if failed:
            out["failed"] = failed
        processor: Processor | None = getattr(request.app.state, "processor", None)
        if processor is not None:
            # `lag` covers the partitions this processor holds ("partitions"); none are
            # held while a consumer group rebalances. null: the log did not answer.
            try:
                out["lag"] = sum((await processor.lag()).values())
            except LogUnavailable:
                out["lag"] = None
            out["partitions"] = sorted(processor.assignment())
            out["processed"] = processor.processed_messages
        return out

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        processor: Processor | None = getattr(request.app.state, "processor", None)
        if processor is not None:
            with contextlib.suppress(Exception):
                await processor.lag()
        components.failing()  # brings funnelstream_component_up up to date with the probes
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _processor_problem(app: FastAPI, part: str) -> str | None:
    processor: Processor | None = getattr(app.state, "processor", None)
    return processor.problems().get(part) if processor is not None else None


async def _enforce_retention(backend: EmbeddedLog, stop: asyncio.Event) -> None:
    # A failure is the supervisor's: logged, shown as "log_retention", retried with backoff.
    while not stop.is_set():
        deleted = await backend.enforce_retention()
        if deleted:
            log.info("log retention removed %d records", deleted)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_CHECK_SECONDS)


class _CatalogRefresh:
    """Picks up funnels saved by another process (split mode). ClickHouse being away keeps
    the last good catalog and is reported as a "clickhouse" problem; any other error is a
    crash, for the supervisor."""

    def __init__(self, app: FastAPI, ch: ClickHouse) -> None:
        self._app = app
        self._ch = ch
        self._problem: str | None = None

    def problem(self) -> str | None:
        return self._problem

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CATALOG_REFRESH_SECONDS)
            if stop.is_set():
                return
            try:
                loaded = await asyncio.to_thread(
                    funnel_store.load_all_sync, self._ch, self._app.state.project_config
                )
            except ClickHouseUnavailable as exc:
                self._problem = f"catalog refresh failing: {exc}"
                log.warning("funnel catalog refresh failed, keeping the last: %s", exc)
                continue
            self._problem = None
            self._app.state.catalog.replace(loaded.funnels, loaded.quarantined)
