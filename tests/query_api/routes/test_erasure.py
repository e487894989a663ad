"""The erasure routes in the whole app (real embedded log, processor and engine): which
key may erase, that a project's admin key erases only its own visitors, how bad ids and a
missing log are answered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from funnelstream.app import build_app
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import IngestSettings, ProcessorSettings

pytestmark = pytest.mark.clickhouse

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_shop"
read_key = "rk_shop"
admin_key = "ak_shop"

[[projects]]
id = "other"
write_key = "wk_other"
read_key = "rk_other"
admin_key = "ak_other"
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def settings(tmp_path: Path, ch: ClickHouse) -> dict[str, object]:
    (tmp_path / "c.toml").write_text(CONFIG)
    return {
        "data_dir": tmp_path / "data",
        "config_file": tmp_path / "c.toml",
        "clickhouse_dsn": ch.dsn,  # the session's engine: one data path per process
        "partitions": 2,
    }


@pytest.fixture
def client(tmp_path: Path, ch: ClickHouse) -> Iterator[TestClient]:
    common = settings(tmp_path, ch)
    app = build_app(
        IngestSettings(**common),  # type: ignore[arg-type]
        ProcessorSettings(**common, batch_max_seconds=0.05),  # type: ignore[arg-type]
    )
    with TestClient(app) as c:
        yield c


def processed(client: TestClient) -> None:
    for _ in range(400):
        if client.get("/healthz").json().get("lag") == 0:
            return
        time.sleep(0.05)
    raise AssertionError("not processed")


def visitors(ch: ClickHouse) -> list[tuple[str, str]]:
    rows = ch.query_rows_sync("SELECT DISTINCT project_id, visitor_id FROM events ORDER BY 1, 2")
    return [(str(p), str(v)) for p, v in rows]


def test_an_admin_key_erases_its_own_projects_visitors_only(
    client: TestClient, ch: ClickHouse
) -> None:
    for project in ("shop", "other"):
        batch = [
            {"event": "view", "visitor_id": "v", "user_id": "u"},
            {"event": "view", "visitor_id": "w", "user_id": "u"},
            {"event": "view", "visitor_id": "x"},
        ]
        r = client.post("/v1/events", json={"batch": batch}, headers=bearer(f"wk_{project}"))
        assert r.status_code == 202, r.text
    processed(client)

    for key in ("rk_shop", "wk_shop"):
        r = client.delete("/v1/visitors/v", headers=bearer(key))
        assert r.status_code == 403, key
        assert r.json()["error"] == "insufficient_scope"
    for key in ("nope", ""):
        r = client.delete("/v1/visitors/v", headers=bearer(key))
        assert r.status_code == 401, key
        assert r.json()["error"] in ("missing_admin_key", "invalid_admin_key")
    r = client.delete("/v1/visitors/" + "v" * 201, headers=bearer("ak_shop"))
    assert r.status_code == 400
    assert r.json()["field"] == "visitor_id"

    r = client.delete("/v1/visitors/v", headers=bearer("ak_other"))
    assert r.status_code == 202 and r.json()["visitors"] == ["v"]
    processed(client)
    assert visitors(ch) == [
        ("other", "w"),
        ("other", "x"),
        ("shop", "v"),
        ("shop", "w"),
        ("shop", "x"),
    ]

    r = client.delete("/v1/users/u", headers=bearer("ak_shop"))
    assert r.status_code == 202 and r.json()["visitors"] == ["v", "w"]
    processed(client)
    assert visitors(ch) == [("other", "w"), ("other", "x"), ("shop", "x")]
    assert ch.query_rows_sync(
        "SELECT project_id, user_id, visitor_id FROM visitor_identities FINAL WHERE NOT is_deleted"
    ) == [("other", "u", "w")]

    # Unknown user: nothing to erase, nothing appended.
    r = client.delete("/v1/users/nobody", headers=bearer("ak_shop"))
    assert r.status_code == 202 and r.json()["visitors"] == []


def test_a_query_api_alone_on_the_embedded_log_refuses_with_503(
    tmp_path: Path, ch: ClickHouse
) -> None:
    common = settings(tmp_path, ch)
    app = build_app(
        IngestSettings(**common),  # type: ignore[arg-type]
        ProcessorSettings(**common),  # type: ignore[arg-type]
        frozenset({"query"}),
    )
    with TestClient(app) as client:
        r = client.delete("/v1/visitors/v", headers=bearer("ak_shop"))
        assert r.status_code == 503
        assert r.headers["retry-after"]
        assert r.json()["error"] == "log_unavailable"
        # Reports go on.
        assert client.get("/v1/stats", headers=bearer("rk_shop")).status_code == 200
