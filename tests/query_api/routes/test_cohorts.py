"""The retention route over a real engine: cohorts of first purchases by week, repeat
purchases after them, a breakdown, a time zone moving an event across midnight, and
refusals naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from funnelstream.clickhouse import ClickHouse
from query_api.routes.cohorts import router
from tests.query_api.routes.test_analysis import READ, events, route_client

pytestmark = pytest.mark.clickhouse

DAY = 86_400
# T0 of test_analysis is 2025-01-01 (a Wednesday); these ranges hold whole weeks.
RANGE = {"from": "2024-12-30T00:00:00Z", "to": "2025-01-27T00:00:00Z"}


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    yield from route_client(ch, router)


@pytest.fixture
def purchases(ch: ClickHouse) -> None:
    """Week of 2024-12-30: a (ads) buys on day 0, again on day 8 and day 15; b (ads) once;
    c (mail) buys day 1 and day 1 again an hour later. Week of 2025-01-06: d (mail) buys
    on day 7 and 21."""
    events(
        ch,
        [
            ("a", "buy", 0, {"channel": "ads"}), ("a", "buy", 8 * DAY, {}),
            ("a", "buy", 15 * DAY, {}), ("b", "buy", 100, {"channel": "ads"}),
            ("c", "buy", DAY, {"channel": "mail"}), ("c", "buy", DAY + 3600, {}),
            ("d", "buy", 7 * DAY, {"channel": "mail"}), ("d", "buy", 21 * DAY, {}),
        ],
    )  # fmt: skip


def get(client: TestClient, **params: Any) -> Any:
    return client.get(
        "/v1/retention", params={**RANGE, "start_event": "buy", **params}, headers=READ
    )


@pytest.mark.usefixtures("purchases")
def test_weekly_cohorts(client: TestClient) -> None:
    r = get(client, periods=3)
    assert r.status_code == 200, r.text
    body = r.json()
    first, second = body["cohorts"]
    assert (first["start"], first["entities"], first["repeated"]) == ("2024-12-30", 3, 2)
    assert [p["returned"] for p in first["periods"]] == [1, 1, 1, 0]
    assert [p["returned_on_or_after"] for p in first["periods"]] == [2, 1, 1, 0]
    assert (second["start"], second["entities"]) == ("2025-01-06", 1)
    assert [p["returned"] for p in second["periods"]] == [0, 0, 1, 0]
    assert all(p["complete"] for p in first["periods"])
    (total,) = body["totals"]
    assert (total["entities"], total["repeated"]) == (4, 3)


@pytest.mark.usefixtures("purchases")
def test_breakdown_and_time_zone(client: TestClient) -> None:
    body = get(client, periods=1, breakdown="channel").json()
    sizes = {(c["start"], c["value"]): c["entities"] for c in body["cohorts"]}
    assert sizes == {("2024-12-30", "ads"): 2, ("2024-12-30", "mail"): 1, ("2025-01-06", "mail"): 1}
    assert [t["value"] for t in body["totals"]] == ["ads", "mail"]
    # a's first purchase, 2025-01-01T00:00Z, is 2024-12-31 in New York: days apart by zone.
    utc = get(client, interval="day", periods=1).json()["cohorts"]
    ny = get(client, interval="day", periods=1, tz="America/New_York").json()["cohorts"]
    assert "2025-01-01" in [c["start"] for c in utc]
    assert "2024-12-31" in [c["start"] for c in ny]


@pytest.mark.parametrize(
    ("params", "field", "error"),
    [
        ({"tz": "Mars/Olympus"}, "tz", "invalid_time_zone"),
        ({"tz": "localtime"}, "tz", "invalid_time_zone"),
        ({"interval": "day", "from": "2020-01-01"}, "from", "too_many_cohorts"),
        ({"interval": "year"}, "interval", "invalid_request"),
        ({"periods": "-1"}, "periods", "invalid_request"),
        ({"start_event": ""}, "start_event", "invalid_request"),
    ],
)
def test_refusals_name_the_field(
    client: TestClient, params: dict[str, str], field: str, error: str
) -> None:
    r = get(client, **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error and field in r.json()["field"], r.json()


@pytest.mark.usefixtures("purchases")
def test_csv(client: TestClient) -> None:
    r = client.get(
        "/v1/retention",
        params={**RANGE, "start_event": "buy", "periods": "1"},
        headers={**READ, "Accept": "text/csv"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = [line.split(",") for line in r.text.splitlines()]
    assert lines[0][:3] == ["cohort", "value", "entities"]
    # Two cohorts, periods 0 and 1 each.
    assert [(row[0], row[5], row[6]) for row in lines[1:]] == [
        ("2024-12-30", "0", "1"), ("2024-12-30", "1", "1"),
        ("2025-01-06", "0", "0"), ("2025-01-06", "1", "0"),
    ]  # fmt: skip
