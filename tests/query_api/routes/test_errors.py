"""ClickHouse errors through real routes and the real engine: our SQL failing is a 500
`query_failed` (logged with the SQL), the caller's regex failing is a 400, and ClickHouse
being unreachable is a 503 with Retry-After."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from processor.rows import EVENT_COLUMNS, ms_to_datetime
from query_api.errors import RETRY_AFTER_SECONDS, install_error_handlers
from query_api.routes.reports import router as reports_router
from query_api.routes.stats import router as stats_router

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}


def make_app(ch: ClickHouse) -> FastAPI:
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog([])
    app.state.project_config = ProjectConfig(
        projects=(Project("shop", SecretStr("wk"), SecretStr("rk")),), funnels=()
    )
    install_error_handlers(app)
    app.include_router(reports_router)
    app.include_router(stats_router)
    return app


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    with TestClient(make_app(ch)) as c:
        yield c


def test_our_sql_failing_is_a_500_logged_with_the_sql(
    client: TestClient, ch: ClickHouse, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.get("/v1/stats", headers=READ).status_code == 200
    failed_before = metrics.REGISTRY.get_sample_value(
        "funnelstream_query_errors_total", {"kind": "query_failed"}
    )
    # A table the route reads has gone (a migration not applied, say): a real SQL error.
    ch.command_sync("RENAME TABLE dead_letters TO dead_letters_aside")
    try:
        with caplog.at_level(logging.ERROR, logger="query_api.errors"):
            r = client.get("/v1/stats", headers=READ)
    finally:
        ch.command_sync("RENAME TABLE dead_letters_aside TO dead_letters")
    assert r.status_code == 500, r.text
    assert r.json()["error"] == "query_failed"
    assert "dead_letters" not in r.json()["message"]  # the server's text stays in the log
    assert "SELECT count() FROM dead_letters FINAL" in caplog.text
    assert "UNKNOWN_TABLE" in caplog.text
    failed = metrics.REGISTRY.get_sample_value(
        "funnelstream_query_errors_total", {"kind": "query_failed"}
    )
    assert failed == (failed_before or 0) + 1


def test_a_regex_clickhouse_cannot_compile_is_refused_before_it_runs(
    client: TestClient, ch: ClickHouse
) -> None:
    """Regexes are validated with RE2 as ClickHouse configures it (schemas/funnels.py), so
    a pattern the engine would refuse never reaches it: a 400 naming the field."""
    ts = ms_to_datetime(int(time.time() * 1000) - 60_000)
    row = ("shop", uuid.uuid4(), "view", "v1", "", "", ts, ts, {"path": "/a"}, {}, 0, 0)
    ch.insert_sync("events", [row], EVENT_COLUMNS)
    funnel = {
        "steps": [
            {"event": "view", "filters": [{"property": "path", "op": "regex", "value": "(?=a)"}]},
            {"event": "buy"},
        ]
    }
    r = client.post("/v1/funnels/report", json={"funnel": funnel}, headers=READ)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "regex_invalid"
    assert body["field"] == "steps[0].filters[0].value"


def test_clickhouse_unreachable_is_a_503_with_retry_after() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        ClickHouse(f"http://127.0.0.1:{port}")
    except ClickHouseUnavailable as exc:
        refused = exc
    else:
        pytest.fail("nothing listens there: the connection must be refused")

    app = FastAPI()

    install_error_envelope(app)
    install_error_handlers(app)

    @app.get("/query")
    async def query() -> None:
        raise refused

    r = TestClient(app).get("/query")
    assert r.status_code == 503
    assert r.json()["error"] == "clickhouse_unavailable"
    assert r.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
