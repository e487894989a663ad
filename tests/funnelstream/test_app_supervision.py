"""The whole app in embedded mode (real log, real chdb) with a processor that crashes on a
real fault: readiness, health and metrics say so, and the processor is restarted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import ValidationError

from funnelstream.app import build_app
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import IngestSettings, ProcessorSettings
from tests.e2e.server import CONFIG, WRITE

pytestmark = pytest.mark.clickhouse


def wait_for(get: Callable[[], Response], ok: Callable[[Response], bool]) -> Response:
    deadline = time.monotonic() + 30
    while True:
        r = get()
        if ok(r):
            return r
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)


def metric(client: TestClient, line_start: str) -> float:
    text = client.get("/metrics").text
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    assert found, f"{line_start} not in /metrics"
    return float(found[0].rsplit(" ", 1)[1])


def test_a_crashing_processor_is_reported_and_restarted(tmp_path: Path, ch: ClickHouse) -> None:
    (tmp_path / "c.toml").write_text(CONFIG)
    common = {
        "data_dir": tmp_path / "data",
        "config_file": tmp_path / "c.toml",
        # The session's engine: chdb opens one data path per process.
        "clickhouse_dsn": ch.dsn,
        "partitions": 2,
    }
    app = build_app(
        IngestSettings(**common),  # type: ignore[arg-type]
        ProcessorSettings(
            **common,  # type: ignore[arg-type]
            retry_initial_seconds=0.05,
            retry_max_seconds=0.2,
            batch_max_seconds=0.05,
        ),
    )
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready" and "processor" in ready.json()["components"]
        restarts_before = metric(client, 'funnelstream_component_restarts_total{component="pro')

        # A real fault the processor cannot retry away: the table it writes events to is
        # gone (an operator's mistake, a broken migration): UNKNOWN_TABLE, a query error.
        ch.command_sync("RENAME TABLE events TO events_away")
        try:
            event = {"event": "page_view", "visitor_id": "v1", "properties": {"price": "5"}}
            assert client.post("/v1/events", json=event, headers=WRITE).status_code == 202
            failing = wait_for(lambda: client.get("/readyz"), lambda r: r.status_code == 503)
            assert failing.json()["status"] == "failing"
            assert "UNKNOWN_TABLE" in failing.json()["failed"]["processor"] or (
                "events" in failing.json()["failed"]["processor"]
            )

            health = client.get("/healthz")
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "degraded" and "processor" in body["failed"]
            assert {"roles", "lag", "partitions", "processed"} <= body.keys()

            assert metric(client, 'funnelstream_component_up{component="processor"}') == 0
            # Restarted with backoff, and failing again on the same batch each time.
            wait_for(
                lambda: client.get("/metrics"),
                lambda _: (
                    metric(client, 'funnelstream_component_restarts_total{component="pro')
                    >= restarts_before + 2
                ),
            )
            assert client.get("/readyz").status_code == 503
            # Ingest still takes events (they wait in the log for a fixed processor).
            assert client.post("/v1/events", json=event, headers=WRITE).status_code == 202
        finally:
            ch.command_sync("RENAME TABLE events_away TO events")
        # Fixed: the next restart writes the waiting batch and the processor is ready again.
        wait_for(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        ((stored,),) = ch.query_rows_sync("SELECT count() FROM events FINAL")
        assert stored == 2
    # Leaving the client ran the shutdown: restarts stop, the tasks end within the bound.


def test_query_api_settings_are_validated_when_the_app_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.toml").write_text(CONFIG)
    common = {"data_dir": tmp_path / "data", "config_file": tmp_path / "c.toml"}
    monkeypatch.setenv("FUNNELSTREAM_MAX_FUNNELS_PER_PROJECT", "0")
    with pytest.raises(ValidationError, match="max_funnels_per_project"):
        build_app(IngestSettings(**common), ProcessorSettings(**common))  # type: ignore[arg-type]
