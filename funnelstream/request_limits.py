"""Body caps and rate limits for every route, before a route runs (an ASGI middleware).

Each path has a policy by kind (`policy_for`):

* ingest (`POST /v1/events`, and the vendor SDK paths of funnelstream/sdk_paths.py): per
  client address here; per write key in the ingest service, once the key is known (a
  beacon sends it in the body). The body cap is checked on `Content-Length` here and on
  the streamed bytes by the route itself, which reads the body under the same cap without
  buffering more of it (ingest/routes.py).
* query (every other `/v1/` route of the query API): per client address, then per bearer
  key, then the body: refused on `Content-Length`, else read here up to the cap (counted
  as it streams, refused the moment it passes) and handed on, so no route ever parses more
  than the cap. The cap is at least a maximal funnel definition (funnelstream/config.py).
* ops (health, metrics, docs, the tracking script): a small body cap, no rate limits.

Answers: 413 `{"error": "body_too_large", "message": ...}` and 429
`{"error": "rate_limited", "message": ...}` with `Retry-After` in whole seconds, each
message naming the setting that refused. Counted in `funnelstream_body_too_large_total`
and `funnelstream_rate_limited_total`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from funnelstream import metrics
from funnelstream.client_address import FORWARDED_FOR, IPNetwork, client_address
from funnelstream.config import IngestSettings, QueryApiSettings
from funnelstream.ratelimit import Limiter, RateLimit, Refusal
from funnelstream.sdk_paths import SDK_PATHS

INGEST_PATH = "/v1/events"
# Under /v1/ but served to browsers like a static file: an ops route.
SCRIPT_PATH = "/v1/funnelstream.js"
# Health, metrics, docs and the script read no body; a constant, not a setting.
OPS_MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    kind: str  # "ingest", "query" or "ops": the metrics' route_kind
    max_body_bytes: int
    body_setting: str  # the setting (or constant) the 413 names
    per_address: RateLimit | None = None
    per_key: RateLimit | None = None
    # The route reads the body itself under the same cap (ingest): only Content-Length here.
    route_reads_body: bool = False


@dataclass(frozen=True, slots=True)
class Policies:
    ingest: RoutePolicy | None
    query: RoutePolicy | None
    ops: RoutePolicy

    def policy_for(self, path: str) -> RoutePolicy:
        if (path == INGEST_PATH or path in SDK_PATHS) and self.ingest is not None:
            return self.ingest
        if path.startswith("/v1/") and path != SCRIPT_PATH and self.query is not None:
            return self.query
        return self.ops


def build_policies(ingest: IngestSettings | None, query: QueryApiSettings | None) -> Policies:
    """The policies of the roles this process serves (None: the role is not served)."""
    ingest_policy = None
    if ingest is not None:
        ingest_policy = RoutePolicy(
            "ingest",
            ingest.max_body_bytes,
            "max_body_bytes",
            per_address=RateLimit.from_setting(
                "ingest_rate_limit_per_address", ingest.ingest_rate_limit_per_address
            ),
            route_reads_body=True,
        )
    query_policy = None
    if query is not None:
        query_policy = RoutePolicy(
            "query",
            query.query_max_body_bytes,
            "query_max_body_bytes",
            per_address=RateLimit.from_setting(
                "query_rate_limit_per_address", query.query_rate_limit_per_address
            ),
            per_key=RateLimit.from_setting(
                "query_rate_limit_per_key", query.query_rate_limit_per_key
            ),
        )
    ops_policy = RoutePolicy("ops", OPS_MAX_BODY_BYTES, "OPS_MAX_BODY_BYTES")
    return Policies(ingest_policy, query_policy, ops_policy)


def bearer_identity(headers: Headers) -> str | None:
    """A digest of the bearer key (never the key itself in memory as a bucket name)."""
    header = headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    key = header[7:].strip()
    if not key:
        return None
    # Starlette decodes headers as latin-1: encoding back gives the bytes as sent.
    return hashlib.blake2b(key.encode("latin-1"), digest_size=16).hexdigest()


def declared_length(headers: Headers) -> int | None:
    """The declared body length; 0 for a request that declares no body; None when it
    cannot be known before reading (chunked)."""
    if "content-length" not in headers and "transfer-encoding" not in headers:
        return 0
    text = headers.get("content-length")
    if text is None or not text.strip().isdigit():
        return None
    return int(text)


class RequestLimits:
    """The middleware: rate limits first (cheapest refusal), then the body cap."""

    def __init__(
        self,
        app: ASGIApp,
        policies: Policies,
        limiter: Limiter,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        self.app = app
        self.policies = policies
        self.limiter = limiter
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policies.policy_for(scope["path"])
        headers = Headers(scope=scope)
        declared = declared_length(headers)
        refusal = self._rate_limit(policy, scope, headers)
        if refusal is not None:
            extra = {"retry-after": str(refusal.retry_after)}
            if declared != 0:
                # A body may follow that is never read: the connection cannot be reused.
                extra["connection"] = "close"
            await _answer(send, 429, refusal.body(), extra)
            return
        if declared is not None and declared > policy.max_body_bytes:
            await _too_large(send, policy)
            return
        if policy.route_reads_body:
            await self.app(scope, receive, send)
            return
        body = await _read_capped(receive, policy.max_body_bytes)
        if body is None:
            await _too_large(send, policy)
            return
        if isinstance(body, _Disconnected):
            return  # the client went away before sending its body: nobody to answer
        await self.app(scope, _replay(body, receive), send)

    def _rate_limit(self, policy: RoutePolicy, scope: Scope, headers: Headers) -> Refusal | None:
        if policy.per_address is not None and policy.per_address.items:
            peer = scope.get("client")
            address = client_address(
                peer[0] if peer else None, headers.get(FORWARDED_FOR, ""), self.trusted_proxies
            )
            refusal = self.limiter.hit(policy.per_address, address, policy.kind)
            if refusal is not None:
                return refusal
        if policy.per_key is not None and policy.per_key.items:
            key = bearer_identity(headers)
            if key is not None:
                return self.limiter.hit(policy.per_key, key, policy.kind)
        return None


class _Disconnected:
    pass


async def _read_capped(receive: Receive, limit: int) -> bytes | _Disconnected | None:
    """The whole body, or None the moment it passes `limit` (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the client's own messages (a disconnect, say)."""
    pending: Message | None = {"type": "http.request", "body": body, "more_body": False}

    async def replay() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replay


async def _too_large(send: Send, policy: RoutePolicy) -> None:
    metrics.BODY_TOO_LARGE.labels(policy.kind).inc()
    message = f"request body exceeds {policy.max_body_bytes} bytes ({policy.body_setting})"
    # The rest of the body is never read: the connection cannot carry another request.
    await _answer(
        send, 413, {"error": "body_too_large", "message": message}, {"connection": "close"}
    )


async def _answer(send: Send, status: int, body: dict[str, Any], extra: dict[str, str]) -> None:
    content = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *((name.encode(), value.encode()) for name, value in extra.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
