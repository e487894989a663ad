"""The public front of `serve` (funnelstream/front.py): the two processes' metrics as one
valid exposition, a forwarded client address believed only with the shared token, and
with the owner down its own answers counted and the failure shown."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from funnelstream import metrics
from funnelstream.config import QueryApiSettings
from funnelstream.front import (
    PEER_HEADER,
    TOKEN_HEADER,
    PublicFront,
    TrustForwarded,
    forward_body_caps,
    merge_metrics,
)
from funnelstream.supervise import Components

OWNER = """# HELP funnelstream_component_up up
# TYPE funnelstream_component_up gauge
funnelstream_component_up{component="log"} 1.0
# HELP funnelstream_rate_limited_total refused
# TYPE funnelstream_rate_limited_total counter
funnelstream_rate_limited_total{limit="q"} 2.0
"""
INGEST = """# HELP funnelstream_component_up up
# TYPE funnelstream_component_up gauge
funnelstream_component_up{component="log"} 0.0
"""


def test_metrics_of_both_processes_merge_into_one_family_each() -> None:
    text = merge_metrics({None: OWNER, "ingest": INGEST}).decode()
    assert text.count("# TYPE funnelstream_component_up gauge") == 1
    assert 'funnelstream_component_up{component="log"} 1.0' in text  # the owner's as before
    assert 'funnelstream_component_up{component="log",process="ingest"} 0.0' in text
    assert 'funnelstream_rate_limited_total{limit="q"} 2.0' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families["funnelstream_component_up"].samples) == 2


async def seen_client(headers: list[tuple[bytes, bytes]]) -> tuple[Any, list[Any]]:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope)

    scope = {"type": "http", "client": ("127.0.0.1", 5000), "headers": headers}
    await TrustForwarded(app, "secret-token")(scope, None, None)  # type: ignore[arg-type]
    return seen["client"], seen["headers"]


async def test_the_peer_header_counts_only_next_to_the_token() -> None:
    peer = (PEER_HEADER.encode(), b"203.0.113.9")
    other = (b"accept", b"*/*")
    client, headers = await seen_client([(TOKEN_HEADER.encode(), b"secret-token"), peer, other])
    assert client == ("203.0.113.9", 0)
    assert headers == [other]  # the private headers go no further
    client, headers = await seen_client([(TOKEN_HEADER.encode(), b"guessed"), peer, other])
    assert client == ("127.0.0.1", 5000)
    assert headers == [other]
    client, _ = await seen_client([peer])
    assert client == ("127.0.0.1", 5000)


# -- the owner down: the front's own answers --------------------------------------------


def dead_owner() -> str:
    """A loopback address nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def responses(kind: str, status_class: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "funnelstream_http_responses_total", {"route_kind": kind, "code": status_class}
    )
    return value or 0.0


async def test_with_the_owner_down_the_front_answers_counts_and_shows_it() -> None:
    async def ingest(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("no ingest path is asked here")

    components = Components()
    front = PublicFront(
        ingest,
        frozenset({"/v1/events"}),
        components,
        dead_owner(),
        "token",
        forward_body_caps(QueryApiSettings()),
    )
    transport = httpx.ASGITransport(app=front)
    async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
        unavailable, too_large = responses("query", "5xx"), responses("query", "4xx")

        answer = await client.get("/v1/funnels")
        assert answer.status_code == 503
        assert answer.json()["error"] == "unavailable"
        assert responses("query", "5xx") == unavailable + 1  # counted here, once
        assert "owner" in components.failing()

        big = b"x" * (QueryApiSettings().query_max_body_bytes + 1)
        answer = await client.post("/v1/funnels", content=big)
        assert answer.status_code == 413  # refused before any forwarding
        assert responses("query", "4xx") == too_large + 1

        health = await client.get("/healthz")
        assert health.status_code == 200  # liveness: this process answers
        assert health.json()["status"] == "degraded"
        assert "owner" in health.json()["failed"]

        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "owner" in ready.json()["failed"]

        scrape = (await client.get("/metrics")).text
        # In the very scrape that found the owner down.
        assert 'funnelstream_component_up{component="owner",process="ingest"} 0.0' in scrape
