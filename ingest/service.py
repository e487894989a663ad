"""Runs the ingest pipeline for one request, with the in-flight bound that keeps memory flat."""

from __future__ import annotations

from typing import Any

from funnelstream import metrics
from funnelstream.config import IngestSettings, Project, ProjectConfig
from funnelstream.key_store import KeyStore
from funnelstream.log import LogProducer, LogRecord
from funnelstream.ratelimit import Limiter, RateLimit
from ingest import pipeline, sdk
from ingest.pipeline import IngestError, Request, Result


class IngestService:
    def __init__(
        self,
        settings: IngestSettings,
        config: ProjectConfig,
        producer: LogProducer,
        keys: KeyStore | None = None,
        *,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        # The write keys: the app's key store (stored keys too), or the config's alone.
        self.keys = keys if keys is not None else KeyStore.config_only(config)
        self.producer = producer
        # Per write key, counted once the key is known (per address: request_limits.py).
        self._limiter = limiter
        self._per_key = RateLimit.from_setting(
            "ingest_rate_limit_per_key", settings.ingest_rate_limit_per_key
        )
        self._pending = 0
        # Why the log refused the last append, until one succeeds again: shown as the
        # "log" component in /readyz (an ingest process has no other view of it).
        self.log_problem: str | None = None

    async def handle(self, request: Request) -> Result:
        s = self.settings
        try:
            # A header key is checked before the body is even read; beacons, which cannot
            # set headers, put the key in the body.
            project = None
            if request.authorization.strip().lower() not in ("", "bearer"):
                project = pipeline.authenticate(self.keys, request.authorization, {})
                self._admit(project)
            raw = pipeline.read_body(request.body, request.content_encoding, s.max_body_bytes)
            body = pipeline.decode_fast(raw, s.max_batch_events)
            if body is None:
                raw_events, envelope = pipeline.parse_json(raw, s.max_batch_events)
            else:
                raw_events, envelope = None, pipeline.envelope_of(body)
            if project is None:
                project = pipeline.authenticate(self.keys, "", envelope)
                self._admit(project)
            errors: list[dict[str, Any]] = []
            records = None
            if body is not None:
                context = pipeline.context_for(request.user_agent, request.country)
                records = pipeline.fast_records(body, project, request.received_at_ms, context)
            if records is None:
                # Some event is invalid (or in a form only the full path reads): it names
                # each field at fault and keeps the valid events.
                if raw_events is None:
                    raw_events, envelope = pipeline.parse_json(raw, s.max_batch_events)
                records, errors = pipeline.full_records(raw_events, envelope, project, request)
            records, dropped = pipeline.drop_bots(records, request.user_agent, s.drop_bot_reasons)
            await self._append(records)
        except IngestError as exc:
            metrics.INGEST_REJECTED.labels(exc.code).inc()
            raise
        if errors:
            metrics.INGEST_REJECTED.labels("invalid_event").inc(len({e["index"] for e in errors}))
        metrics.INGEST_EVENTS.labels(project.id).inc(len(records))
        return Result(accepted=len(records), dropped=dropped, errors=errors)

    async def handle_sdk(self, request: Request, call: sdk.SdkCall) -> sdk.SdkResult:
        """A vendor SDK's request (ingest/sdk.py): decode → authenticate → translate →
        validate and enrich → append, with the guarantees of `handle`."""
        s = self.settings
        try:
            # A header key is checked before the body is decoded, as in `handle`.
            key = sdk.header_key(request.authorization)
            project = self._sdk_project(key) if key else None
            doc = sdk.decode(call, request, s.max_body_bytes)
            if project is None:
                project = self._sdk_project(sdk.body_key(call, doc))
            translated = sdk.translate(call, doc, project.id, request, s.max_batch_events)
            records, errors = sdk.records(translated, project, request)
            if not records and errors:
                raise IngestError(
                    400, "invalid_events", "no message in the request is valid", errors=errors
                )
            records, dropped = pipeline.drop_bots(records, request.user_agent, s.drop_bot_reasons)
            await self._append(records)
        except IngestError as exc:
            if exc.field == "write_key":
                exc.field = sdk.KEY_FIELD[call.protocol]
            metrics.INGEST_REJECTED.labels(exc.code).inc()
            metrics.INGEST_PROTOCOL_REJECTED.labels(call.protocol, exc.code).inc()
            raise
        if errors:
            refused = len({e["index"] for e in errors})
            metrics.INGEST_REJECTED.labels("invalid_event").inc(refused)
            metrics.INGEST_PROTOCOL_REJECTED.labels(call.protocol, "invalid_event").inc(refused)
        merges = len(translated.merges) if records else 0
        stored = len(records) - merges
        metrics.INGEST_EVENTS.labels(project.id).inc(stored)
        metrics.INGEST_PROTOCOL_EVENTS.labels(call.protocol).inc(stored)
        if merges:
            metrics.INGEST_PROTOCOL_REJECTED.labels(call.protocol, "unsupported_merge").inc(merges)
        return sdk.SdkResult(stored, merges, dropped, errors)

    def _sdk_project(self, key: str) -> Project:
        project = pipeline.authenticate(self.keys, "", {"write_key": key} if key else {})
        self._admit(project)
        return project

    async def _append(self, records: list[LogRecord]) -> None:
        """Durably, within the in-flight bound; the log's state kept for /readyz."""
        s = self.settings
        if self._pending + len(records) > s.max_pending_events:
            raise IngestError(
                503,
                "overloaded",
                "too many events waiting for the log",
                retry_after=s.retry_after_seconds,
            )
        self._pending += len(records)
        try:
            await pipeline.append(self.producer, records, s.retry_after_seconds)
        except IngestError as exc:
            self.log_problem = f"appends failing: {exc.message}"
            raise
        finally:
            self._pending -= len(records)
        self.log_problem = None

    def _admit(self, project: Project) -> None:
        """429 past the write key's rate limit: one bucket per project, so every write key
        of a project (several during a rotation) shares it."""
        if self._limiter is None or not self._per_key.items:
            return
        refusal = self._limiter.hit(self._per_key, project.id, "ingest")
        if refusal is not None:
            raise IngestError(
                429, "rate_limited", refusal.message(), retry_after=refusal.retry_after
            )
