"""HTTP routes of the vendor SDK protocols: Segment's tracking API (RudderStack's too) and
PostHog's capture and feature-flag endpoints, at the paths those SDKs post to
(funnelstream/sdk_paths.py). Thin: the request goes to `IngestService.handle_sdk`.

Answers are what the SDKs read: 200 once everything is durably stored (every one of these
SDKs treats only 200, or 2xx, as delivered); 4xx naming the field in the SDK's names, with
`code` (Segment's and RudderStack's SDKs log it) and `detail` (PostHog's) beside our own
`error`; 429/503 with `Retry-After`, which all of them retry.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from funnelstream.sdk_paths import POSTHOG_CAPTURE_PATHS, POSTHOG_FLAG_PATHS, SEGMENT_PATHS
from ingest.pipeline import IngestError
from ingest.protocols import posthog, segment
from ingest.routes import LeanRoute, get_ingest, json_response, pipeline_request
from ingest.sdk import SdkCall

router = APIRouter()

# What posthog-js and the server SDKs read at start-up: no flags, nothing to switch on.
NO_FLAGS: dict[str, Any] = {
    "flags": {},
    "featureFlags": {},
    "featureFlagPayloads": {},
    "errorsWhileComputingFlags": False,
    "quotaLimited": [],
    "sessionRecording": False,
    "supportedCompression": ["gzip", "gzip-js"],
    "autocapture_opt_out": True,
    "capturePerformance": False,
    "heatmaps": False,
    "surveys": False,
    "siteApps": [],
    "toolbarParams": {},
    "isAuthenticated": False,
    "config": {"enable_collect_everything": False},
}

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


async def _handle(request: Request, call: SdkCall) -> Response:
    ingest = get_ingest(request)
    try:
        result = await ingest.handle_sdk(await pipeline_request(request, ingest.settings), call)
    except IngestError as exc:
        return _refusal(exc, exc.body())
    out: dict[str, Any] = {"accepted": result.accepted}
    if result.dead_lettered:
        out["dead_lettered"] = result.dead_lettered
    if result.dropped:
        out["dropped"] = result.dropped
    if result.errors:
        # The valid messages are stored (a resend dedupes them); the others never will
        # be, so the SDK is told with a 4xx it does not retry, naming each field.
        first = result.errors[0]
        partial = IngestError(
            400,
            "invalid_events",
            f"{len({e['index'] for e in result.errors})} message(s) refused, the rest stored",
            field=str(first["field"]),
            errors=result.errors,
        )
        return _refusal(partial, {**partial.body(), **out})
    if call.protocol == segment.NAME:
        return json_response({"success": True, **out}, 200)
    return json_response({"status": 1, **out}, 200)


def _refusal(exc: IngestError, body: dict[str, Any]) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return json_response({**body, "code": exc.code, "detail": exc.message}, exc.status, headers)


def _segment(route: str) -> Endpoint:
    async def post(request: Request) -> Response:
        return await _handle(request, SdkCall(segment.NAME, route))

    return post


async def posthog_capture(request: Request) -> Response:
    query = request.query_params
    call = SdkCall(
        posthog.NAME,
        "capture",
        compression=query.get("compression", ""),
        sent_at_hint=query.get("_", ""),
    )
    return await _handle(request, call)


async def posthog_flags(request: Request) -> Response:
    return json_response(NO_FLAGS, 200)


for _path, _route in SEGMENT_PATHS.items():
    router.add_api_route(
        _path,
        _segment(_route),
        methods=["POST"],
        include_in_schema=False,
        route_class_override=LeanRoute,
    )
for _path in POSTHOG_CAPTURE_PATHS:
    router.add_api_route(
        _path,
        posthog_capture,
        methods=["POST"],
        include_in_schema=False,
        route_class_override=LeanRoute,
    )
for _path in POSTHOG_FLAG_PATHS:
    router.add_api_route(
        _path,
        posthog_flags,
        methods=["GET", "POST"],
        include_in_schema=False,
        route_class_override=LeanRoute,
    )
