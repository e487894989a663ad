"""Keys across processes: two app instances sharing one ClickHouse, a key revoked through
one is refused by the other within key_refresh_seconds; an ingest process alone starts and
takes its config keys while ClickHouse is down, and says so."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import SecretStr

from funnelstream.app import build_app
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import IngestSettings, ProcessorSettings

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_shop_0123456789abcdef"
read_key = "rk_shop_0123456789abcdef"
admin_key = "ak_shop_0123456789abcdef"
"""
ADMIN = {"Authorization": "Bearer ak_shop_0123456789abcdef"}
SECRET = SecretStr("one-secret-for-every-process-0123456789")
REFRESH_SECONDS = 0.5
# The bound: one refresh interval, plus the time one reload and one request take here.
BOUND_SECONDS = REFRESH_SECONDS + 1.5
EVENT = {"event": "page_view", "visitor_id": "v1"}


def instance(tmp_path: Path, name: str, roles: frozenset[str], **extra: Any) -> TestClient:
    (tmp_path / "c.toml").write_text(CONFIG)
    common: dict[str, Any] = {
        "data_dir": tmp_path / name,
        "config_file": tmp_path / "c.toml",
        "partitions": 1,
        "key_secret": SECRET,
        "key_refresh_seconds": REFRESH_SECONDS,
        **extra,
    }
    app = build_app(IngestSettings(**common), ProcessorSettings(**common), roles)
    return TestClient(app)


def seconds_until(call: Callable[[], Response], status: int, limit: float = 10) -> float:
    start = time.monotonic()
    while True:
        r = call()
        if r.status_code == status:
            return time.monotonic() - start
        assert time.monotonic() - start < limit, (r.status_code, r.text)
        time.sleep(0.02)


@pytest.mark.clickhouse
def test_a_key_revoked_through_one_instance_is_refused_by_the_other_within_the_bound(
    tmp_path: Path, ch: ClickHouse
) -> None:
    roles = frozenset({"ingest", "query"})
    with (
        instance(tmp_path, "a", roles, clickhouse_dsn=ch.dsn) as a,
        instance(tmp_path, "b", roles, clickhouse_dsn=ch.dsn) as b,
    ):
        made = a.post("/v1/keys", json={"scope": "write", "label": "site"}, headers=ADMIN)
        assert made.status_code == 201, made.text
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        assert a.post("/v1/events", json=EVENT, headers=key).status_code == 202
        # A new key reaches the other instance within the bound too.
        assert seconds_until(lambda: b.post("/v1/events", json=EVENT, headers=key), 202) < (
            BOUND_SECONDS
        )

        revoked = a.delete(f"/v1/keys/{made.json()['key_id']}", headers=ADMIN)
        assert revoked.status_code == 200, revoked.text
        # At once where it was revoked; within the bound in the other instance.
        assert a.post("/v1/events", json=EVENT, headers=key).status_code == 401
        waited = seconds_until(lambda: b.post("/v1/events", json=EVENT, headers=key), 401)
        assert waited < BOUND_SECONDS, waited
        # The config file's key was never affected.
        config_key = {"Authorization": "Bearer wk_shop_0123456789abcdef"}
        assert b.post("/v1/events", json=EVENT, headers=config_key).status_code == 202
        listed = b.get("/v1/keys", headers=ADMIN).json()["keys"]
        assert next(k for k in listed if k["key_id"] == made.json()["key_id"])["revoked_at"]


def test_ingest_alone_starts_with_clickhouse_down_and_shows_it(tmp_path: Path) -> None:
    with instance(
        tmp_path,
        "ingest",
        frozenset({"ingest"}),
        mode="production",
        clickhouse_dsn="http://127.0.0.1:9",  # nothing listens there
    ) as ingest:
        r = ingest.post(
            "/v1/events",
            json=EVENT,
            headers={"Authorization": "Bearer wk_shop_0123456789abcdef"},
        )
        assert r.status_code == 202, r.text
        ready = ingest.get("/readyz")
        assert ready.status_code == 503
        assert "key reload failing" in ready.json()["failed"]["keys"]
        metrics = ingest.get("/metrics").text
        assert 'funnelstream_component_up{component="keys"} 0.0' in metrics
        assert "funnelstream_key_refresh_failures_total" in metrics
        # A read key still gets the wrong-scope answer, not a pass.
        r = ingest.post(
            "/v1/events", json=EVENT, headers={"Authorization": "Bearer rk_shop_0123456789abcdef"}
        )
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"


def test_outside_local_mode_no_key_secret_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(CONFIG)
    common: dict[str, Any] = {
        "mode": "production",
        "data_dir": tmp_path / "d",
        "config_file": tmp_path / "c.toml",
    }
    with pytest.raises(ValueError, match="FUNNELSTREAM_KEY_SECRET"):
        build_app(IngestSettings(**common), ProcessorSettings(**common), frozenset({"ingest"}))
