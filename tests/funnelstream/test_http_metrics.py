"""Responses counted by route kind and status class, on a real HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from funnelstream import metrics
from funnelstream.app import build_app
from funnelstream.config import IngestSettings, ProcessorSettings
from funnelstream.http_metrics import ResponseCounter, status_class
from funnelstream.request_limits import build_policies
from tests.fixtures.uvicorn_thread import serving

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_test"
read_key = "rk_test"
"""


def responses(kind: str, code: str) -> float:
    labels = {"route_kind": kind, "code": code}
    return metrics.REGISTRY.get_sample_value("funnelstream_http_responses_total", labels) or 0.0


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    settings = IngestSettings(data_dir=tmp_path, config_file=config, max_body_bytes=1000)
    app = build_app(settings, ProcessorSettings(data_dir=tmp_path), frozenset({"ingest"}))
    with serving(app) as p:
        yield p


def test_answers_and_refusals_are_counted_by_kind_and_class(port: int) -> None:
    before = {k: responses(*k) for k in [("ops", "2xx"), ("ingest", "4xx")]}
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.post(f"{base}/v1/events", json={}).status_code == 401
    # refused by the body cap, a middleware inside the counter
    big = {"Authorization": "Bearer wk_test", "Content-Type": "application/json"}
    assert httpx.post(f"{base}/v1/events", content=b"x" * 5000, headers=big).status_code == 413
    after = {k: responses(*k) for k in before}
    assert after[("ops", "2xx")] - before[("ops", "2xx")] == 1
    assert after[("ingest", "4xx")] - before[("ingest", "4xx")] == 2


def test_an_error_nobody_caught_counts_as_5xx() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    inner = Starlette(routes=[Route("/v1/funnels", broken)])
    app = ResponseCounter(inner, build_policies(None, None))
    before = responses("ops", "5xx")
    with serving(app) as p:
        assert httpx.get(f"http://127.0.0.1:{p}/v1/funnels").status_code == 500
    assert responses("ops", "5xx") - before == 1


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 202, 404, 503, 99, 600)] == [
        "2xx",
        "2xx",
        "4xx",
        "5xx",
        "other",
        "other",
    ]
