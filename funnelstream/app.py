"""Assembles the HTTP app for a deployment: any of ingest, processor and query API.

`funnelstream serve` runs all three in one process on one port (embedded log and
ClickHouse); split mode runs each part in its own process against Kafka and a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, migrate
from funnelstream.config import (
    CommonSettings,
    IngestSettings,
    ProcessorSettings,
    load_config,
)
from funnelstream.log import Log, LogUnavailable
from funnelstream.log.embedded import EmbeddedLog
from ingest.routes import router as ingest_router
from ingest.service import IngestService
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from processor.transform import Timing
from query_api import funnel_store
from query_api.errors import install_error_handlers
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
    )


def build_app(
    ingest_settings: IngestSettings,
    processor_settings: ProcessorSettings,
    roles: frozenset[str] = ROLES,
) -> FastAPI:
    settings: CommonSettings = ingest_settings
    project_config = load_config(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The query API alone reads ClickHouse only; it never touches the log.
        backend = open_log(settings) if roles & {"ingest", "processor"} else None
        tasks: list[asyncio.Task[Any]] = []
        stop = asyncio.Event()
        ch: ClickHouse | None = None
        producer = None
        try:
            if backend is not None:
                await backend.ensure_topic(settings.topic, settings.partitions)
            if roles & {"processor", "query"}:
                ch = ClickHouse(settings.resolved_clickhouse_dsn())
                await asyncio.to_thread(migrate, ch)
                funnels = await asyncio.to_thread(funnel_store.load_all_sync, ch, project_config)
                app.state.clickhouse = ch
                app.state.catalog = FunnelCatalog(funnels)
                if roles != ROLES:
                    tasks.append(asyncio.create_task(_refresh_catalog(app, ch, stop)))
            if "ingest" in roles:
                assert backend is not None
                producer = backend.producer(settings.topic)
                await producer.start()
                app.state.ingest = IngestService(ingest_settings, project_config, producer)
            if isinstance(backend, EmbeddedLog):
                tasks.append(asyncio.create_task(_enforce_retention(backend, stop)))
            if "processor" in roles:
                assert ch is not None and backend is not None
                processor = Processor(
                    backend, ch, app.state.catalog, processor_config(processor_settings)
                )
                app.state.processor = processor
                tasks.append(asyncio.create_task(processor.run(stop)))
            yield
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
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

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
        return JSONResponse(
            {
                "error": "invalid_request",
                "field": ".".join(str(p) for p in first["loc"]),
                "message": first["msg"],
            },
            status_code=400,
        )

    if "ingest" in roles:
        app.include_router(ingest_router)
    if "query" in roles:
        install_error_handlers(app)
        app.include_router(funnels_router)
        app.include_router(reports_router)
        app.include_router(live_router)
        app.include_router(analysis_router)
        app.include_router(stats_router)

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "roles": sorted(roles)}
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

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics(request: Request) -> Response:
        processor: Processor | None = getattr(request.app.state, "processor", None)
        if processor is not None:
            with contextlib.suppress(Exception):
                await processor.lag()
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


async def _enforce_retention(backend: EmbeddedLog, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            deleted = await backend.enforce_retention()
            if deleted:
                log.info("log retention removed %d records", deleted)
        except Exception as exc:  # retention is housekeeping: never take the service down
            log.warning("log retention failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_CHECK_SECONDS)


async def _refresh_catalog(app: FastAPI, ch: ClickHouse, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CATALOG_REFRESH_SECONDS)
        try:
            funnels = await asyncio.to_thread(
                funnel_store.load_all_sync, ch, app.state.project_config
            )
            app.state.catalog.replace(funnels)
        except Exception as exc:  # keep the last good catalog
            log.warning("funnel catalog refresh failed: %s", exc)
