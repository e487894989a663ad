"""Breakdowns (event and session properties, each attribution, top N + other), drop-off
lists with their cursor, next events after dropping, the time-to-convert histogram and
the open funnel, over a real engine. (Breakdowns by event property are also held to the
pure-Python reference in tests/query_api/test_report_differential.py.)"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from processor.rows import EVENT_COLUMNS, SESSION_COLUMNS, ms_to_datetime
from query_api.routes.analysis import router as analysis_router
from schemas.funnels import FunnelDefinition

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
RANGE = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-03T00:00:00Z"}
CHECKOUT = FunnelDefinition.model_validate(
    {
        "id": "checkout",
        "project": "shop",
        "window_seconds": 3600,
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
    }
)


def route_client(ch: ClickHouse, router: APIRouter) -> Iterator[TestClient]:
    """One route module over the engine: project `shop` (read key `rk`) with CHECKOUT."""
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog([CHECKOUT])
    app.state.project_config = ProjectConfig(
        projects=(Project("shop", SecretStr("wk"), SecretStr("rk")),), funnels=()
    )
    app.include_router(router)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    yield from route_client(ch, analysis_router)


def events(ch: ClickHouse, rows: list[tuple[str, str, int, dict[str, str]]]) -> None:
    """(visitor, event, seconds after T0, properties)."""
    out: list[tuple[Any, ...]] = []
    for i, (visitor, name, seconds, props) in enumerate(rows):
        ts = ms_to_datetime(T0 + seconds * 1000)
        out.append(("shop", uuid.uuid4(), name, visitor, "", "", ts, ts, props, {}, 0, i))
    ch.insert_sync("events", out, EVENT_COLUMNS)


def sessions(ch: ClickHouse, rows: list[tuple[str, int, int, str, str]]) -> None:
    """(visitor, started s, ended s, utm_source, country)."""
    out = [
        (
            "shop", v, f"{v}-{a}", ms_to_datetime(T0 + a * 1000), ms_to_datetime(T0 + b * 1000),
            1, "/", "", utm, "", "", "desktop", "", "", country, 1, 0,
        )
        for v, a, b, utm, country in rows
    ]  # fmt: skip
    ch.insert_sync("sessions", out, SESSION_COLUMNS)


def groups(body: dict[str, Any]) -> list[tuple[str, bool, list[int]]]:
    return [(g["value"], g["other"], [s["visitors"] for s in g["steps"]]) for g in body["groups"]]


@pytest.fixture
def shop(ch: ClickHouse) -> None:
    # v1: came from ads (plan=free), converted in a second session from email (plan=pro).
    # v2, v3: search, dropped at cart.  v4: direct, viewed only.
    events(
        ch,
        [
            ("v1", "view", 0, {"plan": "free"}), ("v1", "cart", 60, {"plan": "pro"}),
            ("v1", "buy", 2000, {"plan": "pro"}),
            ("v2", "view", 0, {"plan": "free"}), ("v2", "cart", 30, {}),
            ("v2", "search", 40, {}),
            ("v3", "view", 10, {"plan": "team"}), ("v3", "cart", 20, {"plan": "team"}),
            ("v3", "help", 25, {}),
            ("v4", "view", 0, {}),
        ],
    )  # fmt: skip
    sessions(
        ch,
        [
            ("v1", 0, 100, "ads", "DE"), ("v1", 1900, 2000, "email", "FR"),
            ("v2", 0, 40, "search", "DE"), ("v3", 10, 25, "search", "US"), ("v4", 0, 0, "", ""),
        ],
    )  # fmt: skip


@pytest.mark.usefixtures("shop")
def test_breakdown_by_event_property_with_attribution(client: TestClient) -> None:
    url = "/v1/funnels/checkout/breakdown"
    first = client.get(url, params={**RANGE, "property": "plan"}, headers=READ)
    assert first.status_code == 200, first.text
    assert groups(first.json()) == [
        ("free", False, [2, 2, 1]), ("", False, [1, 0, 0]), ("team", False, [1, 1, 0])
    ]  # fmt: skip
    last = client.get(
        url, params={**RANGE, "property": "plan", "attribution": "last_touch"}, headers=READ
    ).json()
    assert groups(last) == [
        ("", False, [2, 1, 0]), ("pro", False, [1, 1, 1]), ("team", False, [1, 1, 0])
    ]  # fmt: skip
    top1 = client.get(
        url,
        params={**RANGE, "property": "plan", "attribution": "step", "step": 1, "limit": 1},
        headers=READ,
    ).json()
    # Step-1 (cart) values: pro (v1), '' (v2, and v4 who never reached cart), team (v3).
    assert groups(top1) == [("", False, [2, 1, 0]), ("", True, [2, 2, 1])]


@pytest.mark.usefixtures("shop")
def test_breakdown_by_session_property(client: TestClient) -> None:
    url = "/v1/funnels/checkout/breakdown"
    params = {**RANGE, "property": "utm_source", "source": "session"}
    first = client.get(url, params=params, headers=READ).json()
    assert groups(first) == [
        ("search", False, [2, 2, 0]), ("", False, [1, 0, 0]), ("ads", False, [1, 1, 1])
    ]  # fmt: skip
    last = client.get(url, params={**params, "attribution": "last_touch"}, headers=READ).json()
    assert ("email", False, [1, 1, 1]) in groups(last)
    bad = client.get(url, params={**params, "property": "nope"}, headers=READ)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_breakdown"


@pytest.mark.usefixtures("shop")
def test_breakdown_by_country(client: TestClient) -> None:
    params = {**RANGE, "property": "country", "source": "session"}
    url = "/v1/funnels/checkout/breakdown"
    first = client.get(url, params=params, headers=READ).json()
    assert groups(first) == [
        ("DE", False, [2, 2, 1]), ("", False, [1, 0, 0]), ("US", False, [1, 1, 0])
    ]  # fmt: skip
    last = client.get(url, params={**params, "attribution": "last_touch"}, headers=READ).json()
    assert ("FR", False, [1, 1, 1]) in groups(last)


@pytest.mark.usefixtures("shop")
def test_dropped_pages_and_next_events(client: TestClient) -> None:
    url = "/v1/funnels/checkout/dropped"
    page = client.get(url, params={**RANGE, "step": 1, "limit": 1}, headers=READ).json()
    assert [v["visitor_id"] for v in page["visitors"]] == ["v2"]
    assert page["next_after"] == "v2"
    page = client.get(
        url, params={**RANGE, "step": 1, "limit": 1, "after": "v2"}, headers=READ
    ).json()
    assert [v["visitor_id"] for v in page["visitors"]] == ["v3"]
    page = client.get(
        url, params={**RANGE, "step": 1, "limit": 1, "after": "v3"}, headers=READ
    ).json()
    assert page["visitors"] == [] and page["next_after"] is None
    # Still inside the 1 h window at `to`: in progress, not dropped.
    early = {"from": RANGE["from"], "to": "2025-01-01T00:10:00Z", "step": 1}
    assert client.get(url, params=early, headers=READ).json()["visitors"] == []
    assert client.get(url, params={**RANGE, "step": 2}, headers=READ).status_code == 400

    nxt = client.get(f"{url}/next-events", params={**RANGE, "step": 1}, headers=READ).json()
    assert [(e["event"], e["visitors"]) for e in nxt["next_events"]] == [("help", 1), ("search", 1)]


@pytest.mark.usefixtures("shop")
def test_time_to_convert_histogram(client: TestClient) -> None:
    url = "/v1/funnels/checkout/time-to-convert"
    body = client.get(url, params={**RANGE, "step": 1, "bins": 3}, headers=READ).json()
    # Times to cart: 60 s (v1), 30 s (v2), 10 s (v3); 3 bins of 20.001 s.
    assert [b["attempts"] for b in body["bins"]] == [1, 1, 1]
    assert body["bins"][0]["from_seconds"] == 0.0
    assert body["bins"][-1]["to_seconds"] == pytest.approx(60.003)
    last = client.get(url, params=RANGE, headers=READ).json()
    assert last["step"] == 2 and sum(b["attempts"] for b in last["bins"]) == 1
    assert client.get(url, params={**RANGE, "step": 0}, headers=READ).status_code == 400


def test_open_funnel_counts_entry_at_any_step(client: TestClient, ch: ClickHouse) -> None:
    events(
        ch,
        [
            ("v1", "cart", 0, {}), ("v1", "buy", 10, {}),  # entered at cart
            ("v2", "view", 0, {}), ("v2", "cart", 5000, {}),  # cart after the 1 h window
            ("v3", "buy", 0, {}),
        ],
    )  # fmt: skip
    body = client.get("/v1/funnels/checkout/open", params=RANGE, headers=READ).json()
    assert [(s["entered"], s["continued"]) for s in body["steps"]] == [(1, 0), (2, 1), (2, 0)]


def csv_rows(client: TestClient, url: str, params: dict[str, Any]) -> list[list[str]]:
    r = client.get(url, params=params, headers={**READ, "Accept": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(r.text)))


@pytest.mark.usefixtures("shop")
def test_csv_and_segment_on_every_analysis(client: TestClient) -> None:
    """Each analysis answers `Accept: text/csv` with the JSON's lines as rows, and takes a
    segment (here: entities with an event of plan free: v1, v2)."""
    base = "/v1/funnels/checkout"
    free = {**RANGE, "segment": '[{"property": "plan", "op": "eq", "value": "free"}]'}
    by_plan = {**free, "property": "plan"}
    rows = csv_rows(client, f"{base}/breakdown", by_plan)
    assert rows[0] == ["value", "other", "index", "visitors"] + [
        "conversion_from_start",
        "conversion_from_previous",
    ]
    assert [(r[0], r[2], r[3]) for r in rows[1:]] == [("free", "0", "2"), ("free", "1", "2")] + [
        ("free", "2", "1")
    ]
    assert groups(client.get(f"{base}/breakdown", params=by_plan, headers=READ).json()) == [
        ("free", False, [2, 2, 1])
    ]
    dropped = csv_rows(client, f"{base}/dropped", {**free, "step": 1})
    assert dropped[0] == ["visitor_id", "reached_at", "attempt_started_at"]
    assert [r[0] for r in dropped[1:]] == ["v2"]
    assert dropped[1][1] == "2025-01-01T00:00:30+00:00"
    nxt = csv_rows(client, f"{base}/dropped/next-events", {**free, "step": 1})
    assert nxt == [["event", "visitors"], ["search", "1"]]
    bins = csv_rows(client, f"{base}/time-to-convert", {**free, "step": 1, "bins": 1})
    assert bins[0] == ["from_seconds", "to_seconds", "attempts"] and bins[1][2] == "2"
    opened = csv_rows(client, f"{base}/open", RANGE)
    assert opened[0] == ["index", "event", "entered", "continued", "continuation"]
    assert [r[2] for r in opened[1:]] == ["4", "3", "1"]
