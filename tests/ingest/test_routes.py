"""Ingest over HTTP (in-process app, real embedded log, no ClickHouse needed)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from funnelstream.app import build_app
from funnelstream.config import IngestSettings, ProcessorSettings
from funnelstream.log import LogProducer, LogRecord, LogUnavailable

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_test"
read_key = "rk_test"
"""
AUTH = {"Authorization": "Bearer wk_test"}


def make_client(tmp_path: Path, **overrides: object) -> TestClient:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    settings = IngestSettings(data_dir=tmp_path, config_file=config, **overrides)  # type: ignore[arg-type]
    app = build_app(settings, ProcessorSettings(data_dir=tmp_path), frozenset({"ingest"}))
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


def read_log(tmp_path: Path) -> list[dict[str, object]]:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "log" / "log.sqlite3")
    rows = conn.execute("SELECT value FROM records ORDER BY partition, offset").fetchall()
    return [orjson.loads(v) for (v,) in rows]


def test_accepted_events_are_in_the_log(client: TestClient, tmp_path: Path) -> None:
    r = client.post(
        "/v1/events",
        json={"batch": [{"event": "page_view", "visitor_id": f"v{i}"} for i in range(5)]},
        headers={**AUTH, "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"},
    )
    assert r.status_code == 202 and r.json() == {"accepted": 5}
    stored = read_log(tmp_path)
    assert sorted(str(e["vid"]) for e in stored) == [f"v{i}" for i in range(5)]
    assert all(e["p"] == "shop" and e["e"] == "page_view" for e in stored)
    assert all("country" not in dict(e.get("ctx") or {}) for e in stored)  # type: ignore[call-overload]


def test_country_from_a_cdn_header_is_stored_with_the_event(
    client: TestClient, tmp_path: Path
) -> None:
    r = client.post(
        "/v1/events",
        json={"event": "page_view", "visitor_id": "v"},
        headers={**AUTH, "CF-IPCountry": "nl"},
    )
    assert r.status_code == 202
    [stored] = read_log(tmp_path)
    assert isinstance(stored["ctx"], dict) and stored["ctx"]["country"] == "NL"


def test_text_plain_beacon_with_key_in_body_and_gzip(client: TestClient) -> None:
    body = orjson.dumps({"batch": [{"event": "x", "visitor_id": "v"}], "write_key": "wk_test"})
    r = client.post("/v1/events", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 202
    r = client.post(
        "/v1/events",
        content=gzip.compress(body),
        headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 202


def test_refusals_say_what_and_why(client: TestClient) -> None:
    r = client.post("/v1/events", json={"event": "x", "visitor_id": "v"})
    assert r.status_code == 401 and r.json()["error"] == "missing_write_key"
    r = client.post(
        "/v1/events",
        json={"event": "x", "visitor_id": "v"},
        headers={"Authorization": "Bearer nope"},
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_write_key"
    r = client.post("/v1/events", json={"event": "x"}, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["errors"] == [{"index": 0, "field": "visitor_id", "message": "is required"}]
    r = client.post("/v1/events", json={"batch": "nope"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["field"] == "batch"
    r = client.post(
        "/v1/events", content=b"\x1f\x8bnot gzip", headers={**AUTH, "Content-Encoding": "gzip"}
    )
    assert r.status_code == 400 and r.json()["error"] == "bad_gzip"
    r = client.post("/v1/events", content=b"{}", headers={**AUTH, "Content-Encoding": "br"})
    assert r.status_code == 415


def test_cors_preflight_allows_any_origin_without_credentials(client: TestClient) -> None:
    r = client.options(
        "/v1/events",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


class DownLog(LogProducer):
    """Stands in for a log that cannot take writes (disk full, broker gone)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def append(self, records: Sequence[LogRecord]) -> None:
        raise LogUnavailable("broker unreachable")


def test_log_down_answers_503_with_retry_after(client: TestClient) -> None:
    client.app.state.ingest.producer = DownLog()  # type: ignore[attr-defined]
    r = client.post("/v1/events", json={"event": "x", "visitor_id": "v"}, headers=AUTH)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "2"
    assert r.json()["error"] == "log_unavailable"


def test_overload_answers_503_before_buffering(tmp_path: Path) -> None:
    with make_client(tmp_path, max_pending_events=3) as c:
        r = c.post(
            "/v1/events", headers=AUTH, json={"batch": [{"event": "x", "visitor_id": "v"}] * 4}
        )
        assert r.status_code == 503 and r.json()["error"] == "overloaded"
        r = c.post(
            "/v1/events", headers=AUTH, json={"batch": [{"event": "x", "visitor_id": "v"}] * 3}
        )
        assert r.status_code == 202
    assert len(read_log(tmp_path)) == 3
