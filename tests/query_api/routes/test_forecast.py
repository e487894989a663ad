"""The forecast route over a real engine: the report's counts feed the model, today's
traffic comes from the range, and refusals name the field. (The model is backtested in
tests/query_api/test_forecast.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from funnelstream.clickhouse import ClickHouse
from query_api.routes.forecast import router
from tests.query_api.routes.test_analysis import RANGE, READ, events, route_client

pytestmark = pytest.mark.clickhouse

URL = "/v1/funnels/checkout/forecast"


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    yield from route_client(ch, router)


@pytest.fixture
def planted(ch: ClickHouse) -> None:
    """Over the two days of RANGE: 40 visitors view, 20 reach cart, 5 buy."""
    rows: list[tuple[str, str, int, dict[str, str]]] = []
    for i in range(40):
        rows.append((f"v{i}", "view", i * 60, {}))
        if i < 20:
            rows.append((f"v{i}", "cart", i * 60 + 1, {}))
        if i < 5:
            rows.append((f"v{i}", "buy", i * 60 + 2, {}))
    events(ch, rows)


def get(client: TestClient, **params: Any) -> Any:
    return client.get(URL, params={**RANGE, **params}, headers=READ)


@pytest.mark.usefixtures("planted")
def test_forecast_from_the_report_counts(client: TestClient) -> None:
    r = get(client, target=10, horizon_days=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(s["converted"], s["trials"]) for s in body["rates"]] == [(20, 40), (5, 20)]
    assert body["entrants_source"] == "current_traffic"
    assert body["entrants_per_day"]["expected"] == 20  # 40 over two days
    assert body["steps"][0]["conversions"]["expected"] == 80  # four days of it
    target = body["target"]
    # End to end 5 / 40: 10 purchases need 80 entrants, 4 days at 20 a day.
    assert target["entrants_needed"]["expected"] == pytest.approx(80)
    assert target["days_needed"]["expected"] == pytest.approx(4)
    low, high = target["entrants_needed"]["low"], target["entrants_needed"]["high"]
    assert low < 80 < high
    given = get(client, entrants=1000).json()
    assert given["entrants_source"] == "given" and given["target"] is None
    assert given["steps"][0]["conversions"] == {"expected": 1000, "low": 1000, "high": 1000}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"horizon_days": "0"}, "horizon_days"),
        ({"entrants": "0"}, "entrants"),
        ({"target": "-1"}, "target"),
        ({"level": "1"}, "level"),
        ({"level": "nan"}, "level"),
        ({"horizon_days": "1e400"}, "horizon_days"),
        ({"to": "2024-01-01"}, "from"),
    ],
)
def test_refusals_name_the_field(client: TestClient, params: dict[str, str], field: str) -> None:
    r = get(client, **params)
    assert r.status_code == 400, r.text
    assert field in r.json()["field"], r.json()


@pytest.mark.usefixtures("planted")
def test_csv(client: TestClient) -> None:
    r = client.get(
        URL, params={**RANGE, "entrants": "1000"}, headers={**READ, "Accept": "text/csv"}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = [line.split(",") for line in r.text.splitlines()]
    assert lines[0][:4] == ["index", "event", "converted", "trials"]
    assert lines[1][:4] == ["0", "view", "", ""] and lines[1][7] == "1000.0"
    assert lines[2][:4] == ["1", "cart", "20", "40"]
