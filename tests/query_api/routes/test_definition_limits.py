"""Every cap on a funnel definition, through the save route: a 400 (409 for the funnel
count) whose body names the rule's code and the field. The rules themselves are tested
in tests/schemas/test_funnel_limits.py; this is the answer a client sees."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig, QueryApiSettings
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from query_api.routes.funnels import router as funnels_router
from query_api.routes.reports import router as reports_router
from schemas.funnels import (
    MAX_ANY_OF,
    MAX_EXCLUSIONS,
    MAX_FILTERS,
    MAX_FUNNEL_LIST_VALUES,
    MAX_LABEL_CHARS,
    MAX_LIST_VALUES,
    MAX_NAME_CHARS,
    MAX_REGEX_CHARS,
    MAX_STEPS,
    MAX_VALUE_CHARS,
)

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
ADMIN = {"Authorization": "Bearer ak"}
MAX_FUNNELS = 2


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog()
    app.state.project_config = ProjectConfig(
        projects=(Project("shop", SecretStr("wk"), SecretStr("rk"), SecretStr("ak")),), funnels=()
    )
    app.state.query_settings = QueryApiSettings(max_funnels_per_project=MAX_FUNNELS)
    app.include_router(funnels_router)
    app.include_router(reports_router)
    with TestClient(app) as c:
        yield c


def steps(*last: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"event": "view"}, *(last or ({"event": "buy"},))]


def filters(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"property": f"p{i}", "op": "is_set", **extra} for i in range(n)]


def in_list(values: list[Any], prop: str = "k") -> dict[str, Any]:
    return {"property": prop, "op": "in", "value": values}


LONG = "x" * MAX_VALUE_CHARS
CASES = [
    # (definition fields, code, field)
    ({"steps": [{"event": f"e{i}"} for i in range(MAX_STEPS + 1)]}, "steps_count", "steps"),
    (
        {"steps": steps({"event": "b", "filters": filters(MAX_FILTERS + 1)})},
        "filters_too_many",
        "steps[1].filters",
    ),
    (
        {
            "steps": steps(
                {"any_of": [{"event": "a"}, {"event": "b", "filters": filters(MAX_FILTERS + 1)}]}
            )
        },
        "filters_too_many",
        "steps[1].any_of[1].filters",
    ),
    (
        {"steps": steps(), "exclusions": [{"event": "x", "filters": filters(MAX_FILTERS + 1)}]},
        "filters_too_many",
        "exclusions[0].filters",
    ),
    (
        {"steps": steps({"any_of": [{"event": f"e{i}"} for i in range(MAX_ANY_OF + 1)]})},
        "any_of_too_many",
        "steps[1].any_of",
    ),
    (
        {"steps": steps(), "exclusions": [{"event": f"x{i}"} for i in range(MAX_EXCLUSIONS + 1)]},
        "exclusions_too_many",
        "exclusions",
    ),
    (
        {"steps": steps({"event": "b", "filters": [in_list(list(range(MAX_LIST_VALUES + 1)))]})},
        "list_too_large",
        "steps[1].filters[0].value",
    ),
    (
        {
            "steps": steps(
                {
                    "event": "b",
                    "filters": [
                        in_list([0] * MAX_LIST_VALUES, f"p{i}")
                        for i in range(MAX_FUNNEL_LIST_VALUES // MAX_LIST_VALUES + 1)
                    ],
                }
            )
        },
        "list_too_large",
        f"steps[1].filters[{MAX_FUNNEL_LIST_VALUES // MAX_LIST_VALUES}].value",
    ),
    (
        {"steps": steps({"event": "b", "filters": [{"property": "k", "value": LONG + "x"}]})},
        "value_too_long",
        "steps[1].filters[0].value",
    ),
    (
        {
            "steps": steps(
                {
                    "event": "b",
                    "filters": [
                        {"property": "k", "op": "regex", "value": "a" * (MAX_REGEX_CHARS + 1)}
                    ],
                }
            )
        },
        "regex_too_long",
        "steps[1].filters[0].value",
    ),
    (
        {"steps": steps({"event": "b", "filters": [in_list([LONG] * 64)]})},
        "definition_too_large",
        "definition",
    ),
    ({"steps": steps({"event": "b" * (MAX_NAME_CHARS + 1)})}, "invalid_funnel", "steps.1.event"),
    ({"steps": steps(), "name": "n" * (MAX_LABEL_CHARS + 1)}, "invalid_funnel", "name"),
]


@pytest.mark.parametrize(("fields", "code", "field"), CASES, ids=[f"{c[1]}:{c[2]}" for c in CASES])
def test_each_definition_cap_is_a_400_naming_the_field(
    client: TestClient, fields: dict[str, Any], code: str, field: str
) -> None:
    for path, body in (
        ("/v1/funnels", {"id": "f", **fields}),
        ("/v1/funnels/report", {"funnel": fields}),
    ):
        r = client.post(path, json=body, headers=ADMIN if path == "/v1/funnels" else READ)
        assert r.status_code == 400, (path, r.text)
        detail = r.json()
        assert (detail["error"], detail["field"]) == (code, field), path


def test_funnels_per_project_is_a_409_naming_the_field(client: TestClient) -> None:
    for i in range(MAX_FUNNELS):
        assert (
            client.post(
                "/v1/funnels", json={"id": f"f{i}", "steps": steps()}, headers=ADMIN
            ).status_code
            == 201
        )
    r = client.post("/v1/funnels", json={"id": "one_more", "steps": steps()}, headers=ADMIN)
    assert r.status_code == 409
    detail = r.json()
    assert (detail["error"], detail["field"]) == ("funnel_limit_reached", "id")
    assert "max_funnels_per_project" in detail["message"]
    # Replacing one is always allowed.
    r = client.put("/v1/funnels/f0", json={"steps": steps()}, headers=ADMIN)
    assert r.status_code == 200, r.text
