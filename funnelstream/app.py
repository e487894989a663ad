"""Assembles the HTTP app for a deployment: any of ingest, processor and query API.

`funnelstream serve` runs them on one public port in two processes (embedded log and
ClickHouse): the owner of the embedded engine (processor, query API) and ingest, which
holds the public port (funnelstream/ingest_process.py, funnelstream/front.py). Split mode
runs each part in its own process against Kafka and a server.

Every background task runs under a supervisor (funnelstream/supervise.py): a crash is
logged, shown by `/readyz` and `/healthz`, and the task restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from funnelstream import metrics
from funnelstream.backoff import BackoffPolicy
from funnelstream.clickhouse import (
    ClickHouse,
    ClickHouseQueryError,
    ClickHouseUnavailable,
    migrate,
)
from funnelstream.cluster_schema import statements_of
from funnelstream.config import (
    CommonSettings,
    IngestSettings,
    LogSettings,
    ProcessorSettings,
    QueryApiSettings,
    load_config,
)
from funnelstream.cors import CorsByRoute
from funnelstream.http_errors import install_error_envelope
from funnelstream.http_metrics import ResponseCounter
from funnelstream.ingest_process import STOP_SECONDS, IngestProcess
from funnelstream.key_store import (
    SNAPSHOT_FILE,
    KeyRefresh,
    KeySnapshotRefresh,
    KeyStore,
    load_secret,
)
from funnelstream.log import Log, LogUnavailable
from funnelstream.log.embedded import EmbeddedLog
from funnelstream.logs import RequestIds
from funnelstream.processor_members import ProcessorMembers
from funnelstream.ratelimit import Limiter
from funnelstream.request_limits import RequestLimits, build_policies
from funnelstream.retention import apply_retention, log_retention_ms, retention_days
from funnelstream.supervise import Components, Supervisor
from ingest.routes import router as ingest_router
from ingest.sdk_routes import router as sdk_router
from ingest.service import IngestService
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from processor.transform import Timing
from query_api import funnel_store
from query_api.erasure import ErasureLog
from query_api.errors import install_error_handlers
from query_api.openapi import install_query_openapi
from query_api.routes.analysis import router as analysis_router
from query_api.routes.board import router as board_router
from query_api.routes.cohorts import router as cohort_retention_router
from query_api.routes.drivers import router as drivers_router
from query_api.routes.erasure import router as erasure_router
from query_api.routes.experiment import router as experiment_router
from query_api.routes.forecast import router as forecast_router
from query_api.routes.funnels import router as funnels_router
from query_api.routes.keys import router as keys_router
from query_api.routes.live import router as live_router
from query_api.routes.page import router as page_router
from query_api.routes.reports import router as reports_router
from query_api.routes.stats import router as stats_router

log = logging.getLogger(__name__)

ROLES = frozenset({"ingest", "processor", "query"})
# Split-mode processors and query APIs pick up funnels saved by another process.
CATALOG_REFRESH_SECONDS = 5.0
RETENTION_CHECK_SECONDS = 3600.0
# The two processes of `funnelstream serve`: "owner" (processor and query API, with the
# embedded engine) and "ingest" (the public port).
ServePart = Literal["owner", "ingest"]


def open_log(settings: CommonSettings, retention: dict[str, int] | None = None) -> Log:
    """`retention`: days per project (funnelstream/retention.py), which bound the log's."""
    days = retention or {}
    if settings.log_backend == "kafka":
        from funnelstream.log.kafka import KafkaLog

        return KafkaLog(settings.kafka_bootstrap, retention_ms=log_retention_ms(days, None))
    from funnelstream.log.embedded import EmbeddedLog

    backend = EmbeddedLog(
        settings.data_dir / "log",
        default_partitions=settings.partitions,
        faults=settings.fault_plan(),
    )
    backend.retention_ms = log_retention_ms(days, backend.retention_ms)
    return backend


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
        batch_idle_seconds=settings.batch_idle_seconds,
        retry_initial_seconds=settings.retry_initial_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        backfill_chunk_visitors=settings.backfill_chunk_visitors,
        metrics_funnels_per_project=settings.metrics_funnels_per_project,
    )


def build_app(
    ingest_settings: IngestSettings,
    processor_settings: ProcessorSettings,
    roles: frozenset[str] = ROLES,
    *,
    serve_part: ServePart | None = None,
    ingest_process: IngestProcess | None = None,
) -> FastAPI:
    """`serve_part`: this app is that process of `funnelstream serve`; the owner starts
    and supervises `ingest_process`."""
    settings: CommonSettings = ingest_settings
    project_config = load_config(settings)
    # Checked now, where keys are checked: a missing or placeholder key secret stops the
    # start. A processor alone authenticates nobody and needs none.
    key_store = (
        KeyStore(project_config, load_secret(settings))
        if roles & {"ingest", "query"}
        else KeyStore.config_only(project_config)
    )
    if serve_part == "owner":
        key_store.snapshot_path = settings.data_dir / SNAPSHOT_FILE
    components = Components()
    policy = BackoffPolicy(
        processor_settings.retry_initial_seconds, processor_settings.retry_max_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The query API alone reads ClickHouse; it opens the log only for an erasure.
        retention = retention_days(project_config, settings.retention_days)
        backend = open_log(settings, retention) if roles & {"ingest", "processor"} else None
        supervisor = Supervisor(components, policy, asyncio.Event())
        # Its own supervisor, so that a stop ends ingest before anything else.
        ingest_supervisor = Supervisor(
            components, policy, asyncio.Event(), shutdown_seconds=STOP_SECONDS + 5
        )
        ch: ClickHouse | None = None
        producer = None
        try:
            if backend is not None:
                await backend.ensure_topic(settings.topic, settings.partitions)
            if roles & {"processor", "query"}:
                ch = ClickHouse(settings.resolved_clickhouse_dsn(), settings.fault_plan())
                await asyncio.to_thread(migrate, ch, statements_of(settings.clickhouse_cluster))
                changed = await apply_retention(ch, retention)
                if changed:
                    log.info("retention set on %s", ", ".join(changed))
                loaded = await asyncio.to_thread(funnel_store.load_all_sync, ch, project_config)
                app.state.clickhouse = ch
                app.state.catalog = FunnelCatalog(
                    loaded.funnels, loaded.quarantined, loaded.versions
                )
                if roles != ROLES and serve_part is None:
                    refresh = _CatalogRefresh(app, ch)
                    components.add_probe("clickhouse", refresh.problem)
                    supervisor.start("catalog_refresh", refresh.run)
            if roles & {"ingest", "query"}:
                key_refresh = await _key_refresh(settings, key_store, ch, serve_part)
                if key_refresh is not None:
                    components.add_probe("keys", key_store.problem)
                    supervisor.start("key_refresh", key_refresh.run)
            if "ingest" in roles:
                assert backend is not None
                producer = backend.producer(settings.topic)
                await producer.start()
                app.state.ingest = service = IngestService(
                    ingest_settings, project_config, producer, key_store, limiter=limiter
                )
                components.add_probe("log", lambda: service.log_problem)
            # The owner keeps the log's retention; ingest alone only appends.
            if isinstance(backend, EmbeddedLog) and serve_part != "ingest":
                supervisor.start("log_retention", partial(_enforce_retention, backend))
            if "query" in roles:
                app.state.erasure_log = _erasure_log(settings, backend, retention)
            if "processor" in roles:
                assert ch is not None and backend is not None
                log_backend, clickhouse = backend, ch

                def make_processor() -> Processor:
                    return Processor(
                        log_backend,
                        clickhouse,
                        app.state.catalog,
                        processor_config(processor_settings),
                    )

                # One or more group members in this process (funnelstream/processor_members.py).
                members = ProcessorMembers(processor_settings.processor_members, make_processor)
                app.state.processor = members
                for part in ("clickhouse", "log"):
                    components.add_probe(part, partial(members.problem, part))
                members.start(supervisor)
                if processor_settings.processor_members > 1:
                    _kill_member_on_signal(members)
            if ingest_process is not None:
                # After the owner's start: the key snapshot it reads is written by now.
                ingest_supervisor.start("ingest_process", ingest_process.run)
            if "processor" not in roles:
                # What exists now (modules, the app, settings, keys) lives as long as the
                # process: frozen, the collector never walks it again. Per request, the
                # young collections otherwise re-scanned it (the processor has its own
                # policy: processor/collector.py).
                gc.freeze()
            yield
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)  # if it was set
            await ingest_supervisor.shutdown()
            await supervisor.shutdown()
            erasure_log: ErasureLog | None = getattr(app.state, "erasure_log", None)
            if erasure_log is not None:
                await erasure_log.close()
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
    app.state.keys = key_store
    if "query" in roles:
        # Read and validated now, like every service's settings: a bad value stops the
        # start, not the first request that needs it (query_api/deps.py).
        app.state.query_settings = QueryApiSettings()
    app.state.components = components
    # Body caps and rate limits on every route (funnelstream/request_limits.py), counted in
    # this process. Added before CORS so that CORS wraps their 413/429 answers: the
    # snippet reads a 429's Retry-After from cross-origin pages.
    limiter = Limiter()
    policies = build_policies(
        ingest_settings if "ingest" in roles else None,
        app.state.query_settings if "query" in roles else None,
    )
    app.add_middleware(
        RequestLimits,
        policies=policies,
        limiter=limiter,
        trusted_proxies=settings.trusted_proxies,
    )
    app.add_middleware(CorsByRoute, query_origins=settings.query_cors_origins)
    # Around the limits: counts every answer, the refusals above included.
    app.add_middleware(ResponseCounter, policies=policies)
    # Around everything: every log line of a request names it (funnelstream/logs.py).
    app.add_middleware(RequestIds, access_log=LogSettings().access_log)

    install_error_envelope(app)

    if "ingest" in roles or serve_part == "owner":
        # The owner documents ingest's routes for the public port's OpenAPI document; the
        # ingest process answers them (funnelstream/front.py), nobody sends them here.
        app.include_router(ingest_router)
        app.include_router(sdk_router)
    if "query" in roles:
        install_error_handlers(app)
        install_query_openapi(app)
        app.include_router(funnels_router)
        app.include_router(reports_router)
        app.include_router(live_router)
        app.include_router(board_router)
        app.include_router(page_router)
        app.include_router(analysis_router)
        app.include_router(experiment_router)
        app.include_router(forecast_router)
        app.include_router(cohort_retention_router)
        app.include_router(drivers_router)
        app.include_router(stats_router)
        app.include_router(keys_router)
        app.include_router(erasure_router)

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
        shown = ROLES if serve_part == "owner" else roles  # serve's, across its processes
        out: dict[str, Any] = {"status": "degraded" if failed else "ok", "roles": sorted(shown)}
        if failed:
            out["failed"] = failed
        processor: ProcessorMembers | None = getattr(request.app.state, "processor", None)
        if processor is not None:
            # `lag` covers the partitions this process's members hold ("partitions"); none
            # are held while a consumer group rebalances. null: the log did not answer.
            try:
                out["lag"] = sum((await processor.lag()).values())
            except LogUnavailable:
                out["lag"] = None
            out["partitions"] = sorted(processor.assignment())
            out["processed"] = processor.processed_messages
            if len(processor.names()) > 1:
                out["members"] = processor.held_by()
        return out

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        processor: ProcessorMembers | None = getattr(request.app.state, "processor", None)
        if processor is not None:
            with contextlib.suppress(Exception):
                await processor.lag()
            processor.export_gauges()
        components.failing()  # brings funnelstream_component_up up to date with the probes
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


async def _key_refresh(
    settings: CommonSettings, store: KeyStore, ch: ClickHouse | None, serve_part: str | None
) -> KeyRefresh | KeySnapshotRefresh | None:
    """The reload of stored keys for this process, or None when it has no shared key
    table. With a ClickHouse connection open (processor, query API) the keys are loaded
    before the first request. A lone ingest process opens its own connection, lazily:
    it starts, and takes config file keys, while ClickHouse is down. A lone ingest process
    on the embedded engine shares no table with anyone (one process per engine): it takes
    the config file's keys only. The ingest process of `serve` reads its owner's snapshot."""
    every = settings.key_refresh_seconds
    if serve_part == "ingest":
        # Loaded before the first request: the requests a restart left waiting in the
        # socket's backlog are answered at once, and stored keys must count for them.
        snapshot = KeySnapshotRefresh(store, settings.data_dir / SNAPSHOT_FILE, every)
        await asyncio.to_thread(snapshot.load)
        return snapshot
    if ch is not None:
        with contextlib.suppress(ClickHouseUnavailable, ClickHouseQueryError):
            await asyncio.to_thread(store.reload_sync, ch)  # a failure is store.problem()
        connection = ch
        return KeyRefresh(store, lambda: connection, every)
    dsn = settings.resolved_clickhouse_dsn()
    if dsn.startswith("chdb://"):
        log.info("ingest on the embedded engine: config file keys only (no shared key table)")
        return None
    return KeyRefresh(store, partial(ClickHouse, dsn), every, owns_connection=True)


def _erasure_log(
    settings: CommonSettings, backend: Log | None, retention: dict[str, int]
) -> ErasureLog:
    """Erasures travel the events log (query_api/erasure.py): through this process's
    backend when it has one, else through one opened on the first erasure. The embedded
    log belongs to the process that runs ingest and the processor (one member per group,
    offsets kept in memory), so a query API on its own erases only through Kafka."""
    if backend is not None:
        shared = backend
        return ErasureLog(lambda: shared, settings.topic, settings.partitions, owned=False)

    def open_own() -> Log:
        if settings.log_backend != "kafka":
            raise LogUnavailable(
                "a query API on its own erases through Kafka; with the embedded log, "
                "erase through `funnelstream serve`"
            )
        return open_log(settings, retention)

    return ErasureLog(open_own, settings.topic, settings.partitions, owned=True)


def _kill_member_on_signal(members: ProcessorMembers) -> None:
    """SIGUSR1 abandons one processor member as a crash would (drills, tests/kafka/
    test_stack.py): members sharing this process cannot be `kill -9`ed one at a time.
    Only where a signal handler can be set (the main thread's loop: `funnelstream`
    commands, not an app run by a test client in another thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, members.kill)


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
            self._app.state.catalog.replace(loaded.funnels, loaded.quarantined, loaded.versions)
