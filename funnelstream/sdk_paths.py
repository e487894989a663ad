"""The paths vendor SDKs post to (ingest/sdk_routes.py answers them), in one place: the
request limits, CORS and the public front treat them as ingest routes."""

from __future__ import annotations

# Segment's tracking API (RudderStack's too): path → message type, or "batch".
SEGMENT_PATHS = {
    "/v1/track": "track",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/identify": "identify",
    "/v1/group": "group",
    "/v1/alias": "alias",
    "/v1/batch": "batch",
    "/v1/import": "batch",
    # analytics.js / analytics-next post each message to its type's initial, and batches
    # (`deliveryStrategy: batching`) to `/b`.
    "/v1/t": "track",
    "/v1/p": "page",
    "/v1/s": "screen",
    "/v1/i": "identify",
    "/v1/g": "group",
    "/v1/a": "alias",
    "/v1/b": "batch",
}


def _both(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Each path with and without the trailing slash: SDKs send either, and a redirect
    would lose a POST body."""
    return tuple(p for path in paths for p in (path, f"{path}/"))


# PostHog capture: the legacy batch (server SDKs), posthog-js's `/e/` and `/i/v0/e/`.
POSTHOG_CAPTURE_PATHS = _both(("/batch", "/capture", "/track", "/e", "/i/v0/e"))
# Feature flags, asked at start-up: answered "no flags".
POSTHOG_FLAG_PATHS = _both(("/decide", "/flags"))

SDK_PATHS = frozenset(SEGMENT_PATHS) | frozenset(POSTHOG_CAPTURE_PATHS + POSTHOG_FLAG_PATHS)
