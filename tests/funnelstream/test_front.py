"""The public front of `serve` (funnelstream/front.py): the two processes' metrics as one
valid exposition, and a forwarded client address believed only with the shared token."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from funnelstream.front import PEER_HEADER, TOKEN_HEADER, TrustForwarded, merge_metrics

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
