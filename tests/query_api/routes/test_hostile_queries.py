"""Hostile query parameters and headers over a real engine: each is a 4xx in the one
envelope, naming the field, and none reaches ClickHouse as an error (docs/errors.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from processor.rows import DEAD_LETTER_COLUMNS
from query_api.deps import AdminProject
from query_api.errors import install_error_handlers
from query_api.routes.analysis import router as analysis_router
from query_api.routes.funnels import router as funnels_router
from query_api.routes.live import router as live_router
from query_api.routes.reports import router as reports_router
from query_api.routes.stats import router as stats_router
from schemas.funnels import FunnelDefinition

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
ADMIN = {"Authorization": "Bearer ak"}
CHECKOUT = FunnelDefinition.model_validate(
    {
        "id": "checkout",
        "project": "shop",
        "window_seconds": 3600,
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
    }
)
EXTREME_TIMES = [
    "99999999999999999999999",  # epoch ms past the calendar
    "-99999999999999999999999",
    "253402300800000",  # 10000-01-01: past datetime's range
    "-62135596800001",  # before year 1
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59",
    "1900-01-01T00:00:00Z",  # a real date, outside what may be asked
    "2299-12-31T00:00:00Z",
    "-1",
    "²",
    "NaN",
]


def make_app(ch: ClickHouse) -> FastAPI:
    app = FastAPI()
    install_error_envelope(app)
    install_error_handlers(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog([CHECKOUT])
    app.state.project_config = ProjectConfig(
        projects=(
            Project("shop", SecretStr("wk"), SecretStr("rk"), SecretStr("ak")),
            Project("other", SecretStr("wk2"), SecretStr("rk2")),
        ),
        funnels=(),
    )
    for router in (funnels_router, reports_router, live_router, analysis_router, stats_router):
        app.include_router(router)

    @app.get("/admin-probe")
    async def admin_probe(project: AdminProject) -> dict[str, str]:
        return {"project": project.id}

    return app


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    with TestClient(make_app(ch)) as c:
        yield c


@pytest.mark.parametrize("value", EXTREME_TIMES)
def test_extreme_from_and_to_are_a_400_naming_the_field(client: TestClient, value: str) -> None:
    for path, extra in [
        ("/v1/funnels/checkout/report", {}),
        ("/v1/funnels/checkout/trend", {}),
        ("/v1/funnels/checkout/breakdown", {"property": "plan"}),
        ("/v1/funnels/checkout/dropped", {"step": "0"}),
    ]:
        for field in ("from", "to"):
            r = client.get(path, params={field: value, **extra}, headers=READ)
            assert r.status_code == 400, (path, field, r.text)
            body = r.json()
            assert body["field"] == field and body["error"] in ("invalid_time", "time_out_of_range")
    r = client.post(
        "/v1/funnels/report",
        json={"funnel": CHECKOUT.model_dump(exclude={"project"}), "from": value},
        headers=READ,
    )
    assert r.status_code == 400 and r.json()["field"] == "from", r.text


def test_the_edges_of_the_time_range_are_answered(client: TestClient) -> None:
    r = client.get(
        "/v1/funnels/checkout/report",
        params={"from": "1970-01-01T00:00:00Z", "to": "2200-01-01T00:00:00Z"},
        headers=READ,
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", ["99999999999999999999999", "253402300800000"])
def test_extreme_last_event_id_and_since_are_a_400(client: TestClient, value: str) -> None:
    r = client.get("/v1/funnels/checkout/live/stream", headers={**READ, "Last-Event-ID": value})
    assert r.status_code == 400 and r.json()["field"] == "Last-Event-ID", r.text
    r = client.get("/v1/funnels/checkout/live/stream", params={"since": value}, headers=READ)
    assert r.status_code == 400 and r.json()["field"] == "since", r.text


def test_huge_integers_in_query_parameters_are_a_400(client: TestClient) -> None:
    huge = str(10**40)
    for path, params in [
        ("/v1/funnels/checkout/dropped", {"step": huge}),
        ("/v1/funnels/checkout/dropped", {"step": "-" + huge}),
        ("/v1/funnels/checkout/time-to-convert", {"step": huge}),
        ("/v1/funnels/checkout/breakdown", {"property": "p", "limit": huge}),
        ("/v1/funnels/checkout/live", {"minutes": huge}),
    ]:
        r = client.get(path, params=params, headers=READ)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["field"] in params, r.text


@pytest.mark.parametrize(
    "key",
    ["Bearer clé-ñ".encode(), b"Bearer \xff\xfe\x80", b"Bearer rk\xc3", b"Bearer ak\xc3"],
)
def test_non_ascii_and_non_utf8_keys_are_a_401_on_read_and_admin(
    client: TestClient, key: bytes
) -> None:
    headers = {"Authorization": key}
    r = client.get("/v1/stats", headers=headers)  # type: ignore[arg-type]
    assert r.status_code == 401 and r.json()["error"] == "invalid_read_key"
    r = client.get("/admin-probe", headers=headers)  # type: ignore[arg-type]
    assert r.status_code == 401 and r.json()["error"] == "invalid_admin_key"
    assert client.get("/admin-probe", headers={"Authorization": "Bearer ak"}).json() == {
        "project": "shop"
    }


def test_stats_count_only_the_projects_own_dead_letters(client: TestClient, ch: ClickHouse) -> None:
    now = datetime.now(UTC)
    rows = [
        (now, "processor", "undecodable", "", 0, offset, "garbage", project)
        for offset, project in enumerate(["shop", "other", "other", ""])
    ]
    ch.insert_sync("dead_letters", rows, DEAD_LETTER_COLUMNS)
    assert client.get("/v1/stats", headers=READ).json()["dead_letters"] == 1
    other = client.get("/v1/stats", headers={"Authorization": "Bearer rk2"}).json()
    assert other["dead_letters"] == 2


def test_every_refusal_is_the_top_level_envelope(client: TestClient) -> None:
    answers = [
        client.get("/v1/stats"),
        client.get("/v1/funnels/nope/report", headers=READ),
        client.get("/v1/funnels/checkout/live", params={"minutes": "x"}, headers=READ),
        client.post("/v1/funnels", json={"id": "x"}, headers=ADMIN),
        client.post("/v1/funnels", content=b"{not json", headers=ADMIN),
        client.get("/v1/no-such-route"),
    ]
    for r in answers:
        body = r.json()
        assert 400 <= r.status_code < 500 and "detail" not in body, r.text
        assert isinstance(body["error"], str) and isinstance(body["message"], str), r.text
    assert answers[2].json()["field"] == "minutes"
    assert answers[3].json()["field"].startswith("steps")


def test_funnel_bodies_with_huge_integers_or_deep_nesting_are_a_400(client: TestClient) -> None:
    huge = 2**64
    step = {"event": "buy", "filters": [{"property": "n", "op": "in", "value": [{"x": huge}]}]}
    funnel = {"id": "f", "steps": [{"event": "view"}, step]}
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    nested = {"id": "f", "steps": [{"event": "view"}, {"event": "buy", "extra": deep}]}
    for body, code, field in [
        (funnel, "number_out_of_range", "steps[1].filters[0].value[0].x"),
        (nested, "nested_too_deep", "steps[1].extra"),
    ]:
        r = client.post("/v1/funnels", json=body, headers=ADMIN)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == code and r.json()["field"].startswith(field)
        r = client.post("/v1/funnels/report", json={"funnel": body}, headers=READ)
        assert r.status_code == 400 and r.json()["field"].startswith(field), r.text


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_json_bodies_nested_past_the_parser_are_a_400(client: TestClient, depth: int) -> None:
    body = b'{"funnel": ' + b"[" * depth + b"]" * depth + b"}"
    r = client.post(
        "/v1/funnels/report",
        content=body,
        headers={**READ, "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_json"
