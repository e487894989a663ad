"""Body caps before a route reads: the ingest app on a real HTTP server, bodies streamed
over a plain socket so the test sees when the server answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from funnelstream.app import build_app
from funnelstream.config import IngestSettings, ProcessorSettings
from funnelstream.request_limits import OPS_MAX_BODY_BYTES
from tests.fixtures.raw_http import stream_body
from tests.fixtures.uvicorn_thread import serving

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_test"
read_key = "rk_test"
"""
AUTH = {"Authorization": "Bearer wk_test", "Content-Type": "application/json"}
CAP = 100_000
HUGE = 8 * 1024 * 1024


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    settings = IngestSettings(data_dir=tmp_path, config_file=config, max_body_bytes=CAP)
    app = build_app(settings, ProcessorSettings(data_dir=tmp_path), frozenset({"ingest"}))
    with serving(app) as p:
        yield p


def test_a_declared_length_over_the_cap_is_refused_before_any_byte(port: int) -> None:
    answer = stream_body("127.0.0.1", port, "/v1/events", AUTH, HUGE, declare_length=True)
    assert answer.status == 413
    assert answer.body["error"] == "body_too_large"
    assert f"{CAP} bytes (max_body_bytes)" in str(answer.body["message"])
    # The first chunk may be on its way; the server answered on the headers.
    assert answer.bytes_sent <= 64 * 1024


def test_a_streamed_body_is_cut_as_it_passes_the_cap(port: int) -> None:
    answer = stream_body("127.0.0.1", port, "/v1/events", AUTH, HUGE)
    assert answer.status == 413
    assert "max_body_bytes" in str(answer.body["message"])
    # Kernel buffers hold some in flight; nowhere near the 8 MB the client meant to send.
    assert answer.bytes_sent < CAP + 4 * 1024 * 1024


def test_ops_routes_take_no_large_body(port: int) -> None:
    big = b"x" * (OPS_MAX_BODY_BYTES + 1)
    r = httpx.post(f"http://127.0.0.1:{port}/healthz", content=big)
    assert r.status_code == 413
    assert "OPS_MAX_BODY_BYTES" in r.json()["message"]


def test_a_body_within_the_cap_reaches_the_route_whole(port: int) -> None:
    batch = [
        {"event": "e", "visitor_id": f"v{i}", "properties": {"p": "x" * 50}} for i in range(900)
    ]
    body = httpx.Request("POST", "/", json={"batch": batch}).content
    assert len(body) < CAP
    r = httpx.post(f"http://127.0.0.1:{port}/v1/events", content=body, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 900
