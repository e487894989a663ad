"""HTTP routes of ingest: `POST /v1/events` and the tracking script."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from funnelstream import metrics
from funnelstream.config import IngestSettings
from funnelstream.http_errors import error_responses
from ingest import pipeline
from ingest.pipeline import IngestError
from ingest.service import IngestService
from schemas.events_wire import AcceptedOut, request_body_schema

SCRIPT_CACHE_SECONDS = 3600


class LeanRoute(APIRoute):
    """A route FastAPI documents (responses, `openapi_extra`) but runs none of its
    per-request machinery for: the endpoint gets the request alone, with no dependency
    to solve and no body to parse or response to validate. For `POST /v1/events`, which
    reads its own body and answers the most requests, that machinery cost more than the
    single-event pipeline itself (bench/results/profile.md)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


router = APIRouter()


def get_ingest(request: Request) -> IngestService:
    service: IngestService = request.app.state.ingest
    return service


def json_response(
    body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(exc: IngestError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return json_response(exc.body(), exc.status, headers)


async def pipeline_request(request: Request, settings: IngestSettings) -> pipeline.Request:
    """The HTTP request as the pipeline reads it (this route's and the SDK routes'); 413
    once the body passes the cap."""
    # Content-Length over the cap was refused before this (funnelstream/request_limits.py);
    # a body streamed without one is cut here, the moment it passes the cap.
    body = await _read_capped(request, settings.max_body_bytes)
    if body is None:
        metrics.BODY_TOO_LARGE.labels("ingest").inc()
        message = f"request body exceeds {settings.max_body_bytes} bytes (max_body_bytes)"
        raise IngestError(413, "body_too_large", message)
    return pipeline.Request(
        body=body,
        content_encoding=request.headers.get("content-encoding", ""),
        authorization=request.headers.get("authorization", ""),
        user_agent=request.headers.get("user-agent", ""),
        country=pipeline.country_from_headers(request.headers, settings.country_headers),
    )


async def post_events(request: Request) -> Response:
    ingest = get_ingest(request)
    try:
        result = await ingest.handle(await pipeline_request(request, ingest.settings))
    except IngestError as exc:
        return error_response(exc)
    return json_response(result.body(), result.status())


router.add_api_route(
    "/v1/events",
    post_events,
    methods=["POST"],
    status_code=202,
    summary="Send one event or a batch",
    response_model=AcceptedOut,
    response_model_exclude_none=True,
    responses={
        202: {"description": "All events durably stored (`accepted`, `dropped` bots)"},
        207: {
            "model": AcceptedOut,
            "description": "Some events stored; `errors` lists the others by index/field",
        },
        **error_responses(400, 401, 403, 413, 415, 429, 503),
    },
    # The body is read raw (size-capped, maybe gzip) and validated by the pipeline; its
    # shape is documented from the wire models.
    openapi_extra={"requestBody": request_body_schema()},
    route_class_override=LeanRoute,
)


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes `limit` (never buffer a huge upload)."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _script() -> bytes | None:
    try:
        return (resources.files("ingest") / "static" / "funnelstream.js").read_bytes()
    except (FileNotFoundError, OSError):
        return None


@router.get(
    "/v1/funnelstream.js",
    summary="The storefront tracking script",
    response_class=Response,
    responses={
        200: {"content": {"application/javascript": {"schema": {"type": "string"}}}},
        **error_responses(404),
    },
)
async def tracking_script() -> Response:
    script = _script()
    if script is None:
        message = "the script is not built: run ingest/static/build.sh"
        return JSONResponse({"error": "not_built", "message": message}, status_code=404)
    return Response(
        script,
        media_type="application/javascript; charset=utf-8",
        headers={
            "Cache-Control": f"public, max-age={SCRIPT_CACHE_SECONDS}",
            "Access-Control-Allow-Origin": "*",
        },
    )
