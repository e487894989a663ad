"""The funnel lifecycle over a real engine: create, replace (a new version; the old one's
reports stay exact), archive, list with versions; writes need the admin key; config-file
funnels are read-only; the per-project limit counts active funnels only."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig, QueryApiSettings
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from processor.rows import EVENT_COLUMNS, ms_to_datetime
from query_api import funnel_store
from query_api.routes.funnels import router as funnels_router
from query_api.routes.live import router as live_router
from query_api.routes.reports import router as reports_router
from schemas.funnels import FunnelDefinition
from tests.fixtures.clickhouse import truncate_all

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
ADMIN = {"Authorization": "Bearer ak"}
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
RANGE = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-03T00:00:00Z"}
VIEW_CART = {"id": "flow", "steps": [{"event": "view"}, {"event": "cart"}]}
VIEW_BUY = {"id": "flow", "steps": [{"event": "view"}, {"event": "buy"}]}
FROM_CONFIG = FunnelDefinition.model_validate(
    {"id": "checkout", "project": "shop", "steps": [{"event": "view"}, {"event": "buy"}]}
)


def make_app(ch: ClickHouse, limit: int = 100) -> FastAPI:
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog([FROM_CONFIG])
    app.state.project_config = ProjectConfig(
        projects=(
            Project("shop", SecretStr("wk"), SecretStr("rk"), SecretStr("ak")),
            Project("other", SecretStr("wk2"), SecretStr("rk2"), SecretStr("ak2")),
        ),
        funnels=(FROM_CONFIG,),
    )
    app.state.query_settings = QueryApiSettings(max_funnels_per_project=limit)
    app.include_router(funnels_router)
    app.include_router(reports_router)
    app.include_router(live_router)
    return app


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    with TestClient(make_app(ch)) as c:
        yield c


def events(ch: ClickHouse, rows: list[tuple[str, str, int]]) -> None:
    """(visitor, event, seconds after T0)."""
    out: list[tuple[Any, ...]] = []
    for i, (visitor, name, seconds) in enumerate(rows):
        ts = ms_to_datetime(T0 + seconds * 1000)
        out.append(("shop", uuid.uuid4(), name, visitor, "", "", ts, ts, {}, {}, 0, i))
    ch.insert_sync("events", out, EVENT_COLUMNS)


def visitors(client: TestClient, funnel_id: str, **params: str) -> list[int]:
    r = client.get(f"/v1/funnels/{funnel_id}/report", params={**RANGE, **params}, headers=READ)
    assert r.status_code == 200, r.text
    return [s["visitors"] for s in r.json()["steps"]]


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    detail: dict[str, Any] = r.json()
    return detail


def test_a_read_key_changes_nothing(client: TestClient) -> None:
    for r in (
        client.post("/v1/funnels", json=VIEW_CART, headers=READ),
        client.put("/v1/funnels/flow", json=VIEW_CART, headers=READ),
        client.delete("/v1/funnels/flow", headers=READ),
        client.put("/v1/funnels/checkout", json=VIEW_CART, headers=READ),
    ):
        assert error(r, 403)["error"] == "insufficient_scope"
    assert [f["id"] for f in client.get("/v1/funnels", headers=READ).json()] == ["checkout"]
    # Another project's admin key writes into its own project, never this one.
    assert client.post("/v1/funnels", json=VIEW_CART, headers={"Authorization": "Bearer ak2"})
    assert client.get("/v1/funnels/flow", headers=READ).status_code == 404


def test_create_replace_and_every_version_kept(client: TestClient, ch: ClickHouse) -> None:
    events(ch, [("v1", "view", 0), ("v1", "cart", 5), ("v2", "view", 0), ("v2", "buy", 9)])
    created = client.post("/v1/funnels", json=VIEW_CART, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["live"] is True
    again = error(client.post("/v1/funnels", json=VIEW_BUY, headers=ADMIN), 409)
    assert again["error"] == "funnel_exists" and "PUT /v1/funnels/flow" in again["message"]
    assert visitors(client, "flow") == [2, 1]  # v1 reached cart

    replaced = client.put("/v1/funnels/flow", json=VIEW_BUY, headers=ADMIN)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == 2
    assert visitors(client, "flow") == [2, 1]  # now v2 reached buy: same counts, other step
    report = client.get("/v1/funnels/flow/report", params=RANGE, headers=READ).json()
    assert [s["event"] for s in report["steps"]] == ["view", "buy"]
    old = client.get("/v1/funnels/flow/report", params={**RANGE, "version": "1"}, headers=READ)
    assert [s["event"] for s in old.json()["steps"]] == ["view", "cart"]
    # Empty the second step of v2: only v1's report still counts the cart.
    client.put(
        "/v1/funnels/flow", json={"steps": [{"event": "view"}, {"event": "x"}]}, headers=ADMIN
    )
    assert visitors(client, "flow") == [2, 0]
    assert visitors(client, "flow", version="1") == [2, 1]
    assert visitors(client, "flow", version="2") == [2, 1]

    history = client.get("/v1/funnels/flow/versions", headers=READ).json()
    assert [(v["version"], v["definition"]["steps"][1]["event"]) for v in history] == [
        (1, "cart"),
        (2, "buy"),
        (3, "x"),
    ]
    assert history[0]["saved_at"] <= history[1]["saved_at"] <= history[2]["saved_at"]
    [listed] = [f for f in client.get("/v1/funnels", headers=READ).json() if f["id"] == "flow"]
    assert (listed["version"], listed["source"], listed["status"]) == (3, "api", "active")
    assert listed["created_at"] == history[0]["saved_at"]
    assert listed["saved_at"] == history[2]["saved_at"] and listed["archived_at"] is None
    assert client.get("/v1/funnels/flow", headers=READ).json() == listed

    missing = error(client.get("/v1/funnels/flow/report?version=9", headers=READ), 404)
    assert (missing["error"], missing["field"]) == ("version_not_found", "version")
    # Refused before any lookup (the app answers 400 for it: funnelstream/app.py).
    zero = client.get("/v1/funnels/flow/report?version=0", headers=READ)
    assert zero.status_code == 400 and zero.json()["field"] == "version"
    mismatch = error(
        client.put("/v1/funnels/flow", json=VIEW_CART | {"id": "b"}, headers=ADMIN), 400
    )
    assert mismatch["field"] == "id"
    unknown = error(
        client.put("/v1/funnels/nope", json={"steps": VIEW_CART["steps"]}, headers=ADMIN), 404
    )
    assert "POST" in unknown["message"]


def test_archive_keeps_history_and_a_new_save_is_the_next_version(
    client: TestClient, ch: ClickHouse
) -> None:
    events(ch, [("v1", "view", 0), ("v1", "cart", 5)])
    client.post("/v1/funnels", json=VIEW_CART, headers=ADMIN)
    assert client.get("/v1/funnels/flow/live", headers=READ).status_code == 200
    archived = client.delete("/v1/funnels/flow", headers=ADMIN)
    assert archived.status_code == 200, archived.text
    assert archived.json()["status"] == "archived" and archived.json()["archived_at"]

    asked = error(client.get("/v1/funnels/flow/live?version=1", headers=READ), 400)
    assert (asked["error"], asked["field"]) == ("version_not_live", "version")
    live = error(client.get("/v1/funnels/flow/live", headers=READ), 404)
    assert live["error"] == "funnel_archived"
    assert client.get("/v1/funnels/flow/live/stream", headers=READ).status_code == 404
    assert visitors(client, "flow") == [1, 1]  # its history stays queryable
    assert visitors(client, "flow", version="1") == [1, 1]
    [listed] = [f for f in client.get("/v1/funnels", headers=READ).json() if f["id"] == "flow"]
    assert (listed["status"], listed["version"]) == ("archived", 1)
    assert client.delete("/v1/funnels/flow", headers=ADMIN).json() == archived.json()

    revived = client.post("/v1/funnels", json=VIEW_BUY, headers=ADMIN)
    assert revived.status_code == 201, revived.text
    assert (revived.json()["version"], revived.json()["status"]) == (2, "active")
    assert client.get("/v1/funnels/flow/live", headers=READ).status_code == 200
    history = client.get("/v1/funnels/flow/versions", headers=READ).json()
    assert [(v["version"], bool(v["archived_at"])) for v in history] == [(1, True), (2, False)]
    assert error(client.delete("/v1/funnels/nope", headers=ADMIN), 404)["error"] == (
        "funnel_not_found"
    )


def test_config_funnels_are_read_only(client: TestClient, ch: ClickHouse) -> None:
    for r in (
        client.put("/v1/funnels/checkout", json=VIEW_CART, headers=ADMIN),
        client.delete("/v1/funnels/checkout", headers=ADMIN),
        client.post("/v1/funnels", json={**VIEW_CART, "id": "checkout"}, headers=ADMIN),
    ):
        refused = error(r, 409)
        assert refused["error"] == "funnel_read_only"
        assert "config file" in refused["message"]
    [listed] = client.get("/v1/funnels", headers=READ).json()
    assert (listed["source"], listed["version"], listed["status"]) == ("config", None, "active")
    assert [s["event"] for s in listed["steps"]] == ["view", "buy"]
    [only] = client.get("/v1/funnels/checkout/versions", headers=READ).json()
    assert only["version"] is None and only["definition"] == FROM_CONFIG.model_dump(mode="json")
    asked = error(client.get("/v1/funnels/checkout/report?version=1", headers=READ), 400)
    assert asked["error"] == "funnel_has_no_versions"
    assert client.get("/v1/funnels/checkout/report", headers=READ).status_code == 200


def test_a_stored_funnel_under_a_config_id_does_not_override_it(
    client: TestClient, ch: ClickHouse
) -> None:
    """A previous release let a read key overwrite a config funnel; the config file wins."""
    ch.insert_sync(
        "funnel_versions",
        [("shop", "checkout", 1, '{"id":"checkout"}', ms_to_datetime(T0), None, time.time_ns())],
        funnel_store.COLUMNS,
    )
    [listed] = client.get("/v1/funnels", headers=READ).json()
    assert listed["source"] == "config"


def test_the_limit_counts_active_funnels_only(ch: ClickHouse) -> None:
    with TestClient(make_app(ch, limit=2)) as client:  # the config funnel is one
        assert client.post("/v1/funnels", json=VIEW_CART, headers=ADMIN).status_code == 201
        other = {**VIEW_CART, "id": "other"}
        full = error(client.post("/v1/funnels", json=other, headers=ADMIN), 409)
        assert full["error"] == "funnel_limit_reached"
        # Replacing an active one is never refused.
        assert client.put("/v1/funnels/flow", json=VIEW_BUY, headers=ADMIN).status_code == 200
        assert client.delete("/v1/funnels/flow", headers=ADMIN).status_code == 200
        assert client.post("/v1/funnels", json=other, headers=ADMIN).status_code == 201
        # Reviving the archived one would make three.
        revive = error(client.put("/v1/funnels/flow", json=VIEW_BUY, headers=ADMIN), 409)
        assert revive["error"] == "funnel_limit_reached"


def test_a_quarantined_version_is_listed_and_replaced_by_put(
    client: TestClient, ch: ClickHouse
) -> None:
    regex = {"property": "k", "op": "regex", "value": "(?=x)"}  # not RE2
    steps = [{"event": "view", "filters": [regex]}, {"event": "cart"}]
    bad = orjson.dumps({"id": "flow", "project": "shop", "steps": steps}).decode()
    ch.insert_sync(
        "funnel_versions",
        [("shop", "flow", 1, bad, ms_to_datetime(T0), None, time.time_ns())],
        funnel_store.COLUMNS,
    )
    [listed] = [f for f in client.get("/v1/funnels", headers=READ).json() if f["id"] == "flow"]
    assert (listed["status"], listed["code"], listed["version"]) == (
        "quarantined",
        "regex_invalid",
        1,
    )
    assert error(client.get("/v1/funnels/flow/report", headers=READ), 409)["error"] == (
        "funnel_quarantined"
    )
    assert client.put("/v1/funnels/flow", json=VIEW_CART, headers=ADMIN).json()["version"] == 2
    assert client.get("/v1/funnels/flow", headers=READ).json()["status"] == "active"


# -- any sequence of writes against a model of the rules ------------------------------------

IDS = ("a", "b", "checkout")  # checkout: the config file's
STEP_EVENTS = ("cart", "buy", "x")
LIMIT = 2  # the config funnel is one of them
Op = tuple[str, str, str]  # (method, funnel id, second step's event)


@dataclass
class Modelled:
    """One API funnel as the rules say it is: its versions' second steps, archived or not."""

    versions: list[str] = field(default_factory=list)
    archived: bool = False


def expected(model: dict[str, Modelled], op: Op) -> tuple[int, str | None]:
    """(status, error code) the rules give `op`, applied to the model when it succeeds."""
    method, fid, event = op
    if fid == "checkout":
        return 409, "funnel_read_only"
    funnel = model.get(fid)
    active = 1 + sum(not f.archived for f in model.values())
    if method == "DELETE":
        if funnel is None:
            return 404, "funnel_not_found"
        funnel.archived = True
        return 200, None
    if method == "POST" and funnel is not None and not funnel.archived:
        return 409, "funnel_exists"
    if method == "PUT" and funnel is None:
        return 404, "funnel_not_found"
    if (funnel is None or funnel.archived) and active >= LIMIT + 1:
        return 409, "funnel_limit_reached"
    funnel = model.setdefault(fid, Modelled())
    funnel.versions.append(event)
    funnel.archived = False
    return (201 if method == "POST" else 200), None


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(("POST", "PUT", "DELETE")),
            st.sampled_from(IDS),
            st.sampled_from(STEP_EVENTS),
        ),
        max_size=12,
    )
)
def test_any_sequence_of_writes_follows_the_rules(ch: ClickHouse, ops: list[Op]) -> None:
    truncate_all(ch)
    events(ch, [("v1", "view", 0), ("v1", "cart", 5), ("v2", "view", 0), ("v2", "buy", 9)])
    model: dict[str, Modelled] = {}
    with TestClient(make_app(ch, limit=LIMIT + 1)) as client:
        for method, fid, event in ops:
            body = {"id": fid, "steps": [{"event": "view"}, {"event": event}]}
            path = "/v1/funnels" if method == "POST" else f"/v1/funnels/{fid}"
            r = client.request(
                method, path, json=None if method == "DELETE" else body, headers=ADMIN
            )
            status, code = expected(model, (method, fid, event))
            assert r.status_code == status, (method, fid, r.text)
            if code is not None:
                assert r.json()["error"] == code
        listed = {f["id"]: f for f in client.get("/v1/funnels", headers=READ).json()}
        assert listed.keys() == {"checkout", *model}
        for fid, funnel in model.items():
            assert listed[fid]["version"] == len(funnel.versions)
            assert listed[fid]["status"] == ("archived" if funnel.archived else "active")
            history = client.get(f"/v1/funnels/{fid}/versions", headers=READ).json()
            assert [v["definition"]["steps"][1]["event"] for v in history] == funnel.versions
            # Every version's report computes with that version's definition.
            for n, event in enumerate(funnel.versions, start=1):
                reached = {"cart": 1, "buy": 1, "x": 0}[event]
                assert visitors(client, fid, version=str(n)) == [2, reached]
            live = client.get(f"/v1/funnels/{fid}/live", params={"minutes": 0}, headers=READ)
            assert live.status_code == (404 if funnel.archived else 200)
