"""The admin API for keys over a real engine: create (shown once), list, revoke; own
project only; config file keys read-only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig, QueryApiSettings
from funnelstream.http_errors import install_error_envelope
from funnelstream.key_store import KeyStore
from query_api.routes.keys import router as keys_router
from query_api.routes.stats import router as stats_router

pytestmark = pytest.mark.clickhouse

SHOP_ADMIN = {"Authorization": "Bearer ak_shop"}
BLOG_ADMIN = {"Authorization": "Bearer ak_blog"}
CONFIG = ProjectConfig(
    (
        Project("shop", SecretStr("wk_shop"), SecretStr("rk_shop"), SecretStr("ak_shop")),
        Project("blog", SecretStr("wk_blog"), SecretStr("rk_blog"), SecretStr("ak_blog")),
    ),
    (),
)


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.project_config = CONFIG
    app.state.keys = KeyStore(CONFIG, b"x" * 32)
    app.state.query_settings = QueryApiSettings(max_keys_per_project=MAX_KEYS)
    app.include_router(keys_router)
    app.include_router(stats_router)
    with TestClient(app) as c:
        yield c


MAX_KEYS = 3


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_created_key_is_shown_once_and_works_at_once(client: TestClient, ch: ClickHouse) -> None:
    r = client.post("/v1/keys", json={"scope": "read", "label": "grafana"}, headers=SHOP_ADMIN)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["key"].startswith("rk_" + made["key_id"] + "_")
    assert (made["project"], made["scope"], made["label"], made["source"]) == (
        "shop",
        "read",
        "grafana",
        "stored",
    )
    assert client.get("/v1/stats", headers=bearer(made["key"])).status_code == 200

    listed = client.get("/v1/keys", headers=SHOP_ADMIN)
    assert listed.status_code == 200
    assert made["key"] not in listed.text and "ak_shop" not in listed.text
    rows = {k["key_id"]: k for k in listed.json()["keys"]}
    assert rows[made["key_id"]]["revoked_at"] is None
    assert {"config:shop:write", "config:shop:read", "config:shop:admin"} <= rows.keys()
    assert all(k["project"] == "shop" for k in rows.values())
    stored = ch.query_rows_sync("SELECT digest FROM api_keys")
    assert made["key"] not in str(stored)


def test_rotation_new_key_then_revoke_the_old(client: TestClient) -> None:
    old = client.post("/v1/keys", json={"scope": "admin"}, headers=SHOP_ADMIN).json()
    new = client.post("/v1/keys", json={"scope": "admin"}, headers=bearer(old["key"])).json()
    r = client.delete(f"/v1/keys/{old['key_id']}", headers=bearer(new["key"]))
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"] is not None
    assert client.get("/v1/keys", headers=bearer(old["key"])).status_code == 401
    assert client.get("/v1/keys", headers=bearer(new["key"])).status_code == 200
    again = client.delete(f"/v1/keys/{old['key_id']}", headers=bearer(new["key"]))
    assert again.status_code == 200 and again.json() == r.json()


def test_another_projects_admin_key_neither_sees_nor_revokes(client: TestClient) -> None:
    made = client.post("/v1/keys", json={"scope": "write"}, headers=SHOP_ADMIN).json()
    listed = client.get("/v1/keys", headers=BLOG_ADMIN).json()["keys"]
    assert all(k["project"] == "blog" for k in listed)
    assert made["key_id"] not in {k["key_id"] for k in listed}
    r = client.delete(f"/v1/keys/{made['key_id']}", headers=BLOG_ADMIN)
    assert r.status_code == 404 and r.json()["error"] == "key_not_found"
    r = client.delete("/v1/keys/config:shop:read", headers=BLOG_ADMIN)
    assert r.status_code == 404
    # Still active for its own project.
    rows = client.get("/v1/keys", headers=SHOP_ADMIN).json()["keys"]
    assert next(k for k in rows if k["key_id"] == made["key_id"])["revoked_at"] is None


def test_config_keys_are_read_only_here(client: TestClient) -> None:
    r = client.delete("/v1/keys/config:shop:read", headers=SHOP_ADMIN)
    assert r.status_code == 409 and r.json()["error"] == "config_key_read_only"
    assert client.get("/v1/stats", headers=bearer("rk_shop")).status_code == 200


@pytest.mark.parametrize(
    "body",
    [{}, {"scope": "owner"}, {"scope": "read", "label": "x" * 201}, {"scope": ["read"]}],
)
def test_a_bad_create_body_is_a_4xx(client: TestClient, body: object) -> None:
    r = client.post("/v1/keys", json=body, headers=SHOP_ADMIN)
    assert 400 <= r.status_code < 500, r.text


def test_active_keys_per_project_are_capped_and_revoking_frees_a_place(
    client: TestClient, ch: ClickHouse
) -> None:
    made = [
        client.post("/v1/keys", json={"scope": "read"}, headers=SHOP_ADMIN) for _ in range(MAX_KEYS)
    ]
    assert [r.status_code for r in made] == [201] * MAX_KEYS
    r = client.post("/v1/keys", json={"scope": "write"}, headers=SHOP_ADMIN)
    assert r.status_code == 409 and r.json()["error"] == "key_limit_reached", r.text
    assert "max_keys_per_project" in r.json()["message"]
    # Another project has its own count.
    assert (
        client.post("/v1/keys", json={"scope": "read"}, headers=bearer("ak_blog")).status_code
        == 201
    )
    key_id = made[0].json()["key_id"]
    assert client.delete(f"/v1/keys/{key_id}", headers=SHOP_ADMIN).status_code == 200
    assert client.post("/v1/keys", json={"scope": "read"}, headers=SHOP_ADMIN).status_code == 201
