"""The public port of `funnelstream serve`, held by its ingest process.

`serve` runs two processes (funnelstream/ingest_process.py): the owner of the embedded
engine (processor, query API) listens on a loopback port, and the ingest process holds
the public one. Users see one port: ingest's own routes (`POST /v1/events`, the tracking
script) are answered here, every other request is forwarded to the owner and its answer
streamed back as it comes (SSE included). `/readyz` and `/metrics` answer for both
processes: the owner's components plus this process's, prefixed `ingest.`, and the
owner's metrics as they are plus this process's labelled `process="ingest"`.

A forwarded body is read here first, under the cap the owner applies
(funnelstream/request_limits.py, rate limits left to the owner): an answer the owner
gives before reading the body (413 on a declared length) would otherwise be lost to the
unread body, and an oversized one is refused without being sent on.

The owner counts per-address rate limits against the address this process saw: it sends
the peer address in a header, which the owner believes only next to the token the two
processes share (`TrustForwarded`), so nobody else can choose their address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

import httpx
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from funnelstream import metrics
from funnelstream.config import QueryApiSettings
from funnelstream.http_metrics import status_class
from funnelstream.ratelimit import Limiter
from funnelstream.request_limits import Policies, RequestLimits, build_policies
from funnelstream.supervise import Components, describe

TOKEN_HEADER = "x-funnelstream-forward-token"
# Set in a request's scope once the owner answers it (the owner counts that answer).
_FORWARDED = "funnelstream.forwarded"
PEER_HEADER = "x-funnelstream-peer"
# Not forwarded either way: they describe one connection, not the request.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        TOKEN_HEADER,
        PEER_HEADER,
    }
)
_BODY_HEADERS = (b"content-length", b"transfer-encoding")
_PRIVATE = (TOKEN_HEADER.encode(), PEER_HEADER.encode())
OWNER_TIMEOUT = httpx.Timeout(30.0, read=None)  # read: an SSE stream may idle for long
PROBE_TIMEOUT = 5.0


def _forwarded_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in _HOP_BY_HOP]


class PublicFront:
    """ASGI app of the public port: ingest paths to `ingest_app`, the rest to `owner`."""

    def __init__(
        self,
        ingest_app: ASGIApp,
        ingest_paths: frozenset[str],
        components: Components,
        owner: str,
        token: str,
        body_caps: Policies,
    ) -> None:
        self._ingest = ingest_app
        self._ingest_paths = ingest_paths
        self._components = components
        self._owner = owner
        self._token = token
        self._client: httpx.AsyncClient | None = None
        self._owner_problem: str | None = None
        self._policies = body_caps
        self._capped_forward = RequestLimits(self._forward, body_caps, Limiter())
        components.add_probe("owner", lambda: self._owner_problem)

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop.
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._owner,
                timeout=OWNER_TIMEOUT,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            try:
                await self._ingest(scope, receive, send)
            finally:
                if self._client is not None:
                    await self._client.aclose()
            return
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self._ingest_paths:
            await self._ingest(scope, receive, send)  # counted by the ingest app itself
            return
        # The answers given here (a 413 before forwarding, 503 with the owner down,
        # readiness, liveness, metrics) are counted here; the owner counts its own.
        send = self._counting(scope, send)
        if path == "/readyz":
            await self._readyz(send)
        elif path == "/healthz":
            await self._healthz(send)
        elif path == "/metrics":
            await self._metrics(send)
        else:
            await self._capped_forward(scope, receive, send)

    def _counting(self, scope: Scope, send: Send) -> Send:
        kind = self._policies.policy_for(scope["path"]).kind

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not scope.get(_FORWARDED):
                metrics.HTTP_RESPONSES.labels(kind, status_class(message["status"])).inc()
            await send(message)

        return counting_send

    # forwarding

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _forwarded_headers(scope["headers"])
        client = scope.get("client")
        headers.append((TOKEN_HEADER.encode(), self._token.encode()))
        headers.append((PEER_HEADER.encode(), (client[0] if client else "unknown").encode()))
        has_body = any(k.lower() in _BODY_HEADERS for k, _ in scope["headers"])
        # The raw path: an escaped "/" in a visitor id must stay escaped.
        raw_path: bytes | None = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        url = httpx.URL(path=path, query=scope["query_string"])
        request = self._http().build_request(
            scope["method"], url, headers=headers, content=_body(receive) if has_body else None
        )
        try:
            response = await self._http().send(request, stream=True)
        except httpx.HTTPError as exc:
            self._owner_problem = f"not answering: {describe(exc)}"
            await _send_json(send, 503, _unavailable(exc))
            return
        self._owner_problem = None
        scope[_FORWARDED] = True  # the owner's answer: counted by the owner
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    # This server adds its own date and server headers.
                    "headers": [
                        (k, v)
                        for k, v in _forwarded_headers(response.headers.raw)
                        if k.lower() not in (b"date", b"server")
                    ],
                }
            )
            pump = asyncio.ensure_future(_pump(response, send))
            gone = asyncio.ensure_future(_disconnected(receive))
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, gone):
                if not task.done():
                    task.cancel()
                # A send that failed because the client left ends the answer, as it should.
                with contextlib.suppress(asyncio.CancelledError, OSError, RuntimeError):
                    await task
        finally:
            await response.aclose()

    # both processes' readiness and metrics

    async def _readyz(self, send: Send) -> None:
        failed = {f"ingest.{k}": v for k, v in self._components.failing().items()}
        names = [f"ingest.{n}" for n in self._components.names()]
        try:
            owner = await self._http().get("/readyz", timeout=PROBE_TIMEOUT)
            doc = owner.json()
            failed.update(doc.get("failed", {}))
            names += doc.get("components", [])
            self._owner_problem = None
        except (httpx.HTTPError, ValueError) as exc:
            self._owner_problem = f"not answering: {describe(exc)}"
            failed["owner"] = self._owner_problem
        if failed:
            await _send_json(send, 503, {"status": "failing", "failed": failed})
        else:
            await _send_json(send, 200, {"status": "ready", "components": sorted(names)})

    async def _healthz(self, send: Send) -> None:
        """The owner's liveness (lag, partitions, processed), never "ok" over a failure of
        either process; always 200 while this process answers."""
        failed = {f"ingest.{k}": v for k, v in self._components.failing().items()}
        try:
            owner = await self._http().get("/healthz", timeout=PROBE_TIMEOUT)
            doc: dict[str, Any] = owner.json()
            self._owner_problem = None
        except (httpx.HTTPError, ValueError) as exc:
            self._owner_problem = f"not answering: {describe(exc)}"
            doc = {"status": "degraded"}
            failed["owner"] = self._owner_problem
        if failed:
            doc["status"] = "degraded"
            doc["failed"] = {**doc.get("failed", {}), **failed}
        await _send_json(send, 200, doc)

    async def _metrics(self, send: Send) -> None:
        texts: dict[str | None, str] = {}
        try:
            owner = await self._http().get("/metrics", timeout=PROBE_TIMEOUT)
            owner.raise_for_status()
            texts[None] = owner.text
            self._owner_problem = None
        except httpx.HTTPError as exc:
            self._owner_problem = f"not answering: {describe(exc)}"
        # After the owner's answer, so funnelstream_component_up shows it in this scrape.
        self._components.failing()
        texts["ingest"] = generate_latest(metrics.REGISTRY).decode()
        body = merge_metrics(texts)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def forward_body_caps(query: QueryApiSettings) -> Policies:
    """The owner's body caps for what is forwarded to it, without its rate limits."""
    policies = build_policies(None, query)
    assert policies.query is not None
    return replace(policies, query=replace(policies.query, per_address=None, per_key=None))


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(texts: dict[str | None, str]) -> bytes:
    """Prometheus text of several processes as one exposition: each sample labelled with
    its process (None: left as it is, the owner's, so its series read as before `serve`
    had two processes), families of the same name merged (a repeated one is invalid)."""
    merged: dict[str, Metric] = {}
    for process, text in texts.items():
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            into.samples.extend(
                s if process is None else s._replace(labels={**s.labels, "process": process})
                for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _pump(response: httpx.Response, send: Send) -> None:
    # The owner going away mid-answer raises here: the server then aborts the connection,
    # so the client sees a cut answer, never one that looks complete.
    async for chunk in response.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _unavailable(exc: Exception) -> dict[str, Any]:
    return {
        "error": "unavailable",
        "message": f"the query API process is not answering ({describe(exc)}); retry",
    }


async def _send_json(send: Send, status: int, doc: dict[str, Any]) -> None:
    body = orjson.dumps(doc)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TrustForwarded:
    """The owner's side: a request that carries the shared token takes its client address
    from the ingest process's header; the headers go either way."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = {k.lower(): v for k, v in scope["headers"] if k.lower() in _PRIVATE}
            if found:
                headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _PRIVATE]
                scope = dict(scope, headers=headers)
                token = found.get(_PRIVATE[0], b"")
                peer = found.get(_PRIVATE[1])
                if peer is not None and hmac.compare_digest(token, self._token):
                    scope["client"] = (peer.decode("latin-1"), 0)
        await self._app(scope, receive, send)
