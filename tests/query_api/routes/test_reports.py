"""The report routes over a real engine: saved and ad-hoc funnels, trend, validation codes,
and funnels the live stage machine cannot hold."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from processor.rows import EVENT_COLUMNS, ms_to_datetime
from query_api.routes.funnels import router as funnels_router
from query_api.routes.live import router as live_router
from query_api.routes.reports import router as reports_router

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
ADMIN = {"Authorization": "Bearer ak"}
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
RANGE = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-03T00:00:00Z"}
CHECKOUT = {
    "id": "checkout",
    "window_seconds": 3600,
    "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
}


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog()
    app.state.project_config = ProjectConfig(
        projects=(Project("shop", SecretStr("wk"), SecretStr("rk"), SecretStr("ak")),), funnels=()
    )
    app.include_router(funnels_router)
    app.include_router(reports_router)
    app.include_router(live_router)
    with TestClient(app) as c:
        yield c


def events(ch: ClickHouse, rows: list[tuple[str, str, int]]) -> None:
    """(visitor, event, seconds after T0)."""
    out: list[tuple[Any, ...]] = []
    for i, (visitor, name, seconds) in enumerate(rows):
        ts = ms_to_datetime(T0 + seconds * 1000)
        out.append(("shop", uuid.uuid4(), name, visitor, "", "", ts, ts, {}, {}, 0, i))
    ch.insert_sync("events", out, EVENT_COLUMNS)


def test_adhoc_report_counts_times_and_exclusions(client: TestClient, ch: ClickHouse) -> None:
    events(
        ch,
        [
            ("v1", "view", 0), ("v1", "cart", 60), ("v1", "buy", 120),
            ("v2", "view", 0), ("v2", "cart", 30), ("v2", "refund", 40), ("v2", "buy", 50),
            ("v3", "view", 0),
        ],
    )  # fmt: skip
    r = client.post("/v1/funnels/report", json={"funnel": CHECKOUT, **RANGE}, headers=READ)
    assert r.status_code == 200, r.text
    steps = r.json()["steps"]
    assert [s["visitors"] for s in steps] == [3, 2, 2]
    assert steps[2]["time_to_convert"]["median_from_start"] == 120.0  # quantileExact: upper
    assert steps[1]["time_to_convert"]["p90_from_previous"] == 60.0
    assert steps[2]["time_to_convert"]["avg_from_start"] == 85.0

    excluded = {**CHECKOUT, "exclusions": [{"event": "refund", "from_step": 1, "to_step": 2}]}
    r = client.post("/v1/funnels/report", json={"funnel": excluded, **RANGE}, headers=READ)
    # v2's only attempt is discarded entirely by the refund between cart and buy.
    assert [s["visitors"] for s in r.json()["steps"]] == [2, 1, 1]


@pytest.mark.parametrize(
    ("change", "visitors"),
    [
        ({"order": "strict"}, [3, 2, 1]),  # v2: refund between cart and buy
        ({"order": "any"}, [3, 2, 2]),
        ({"counting": "total"}, [3, 2, 2]),
        ({"count_by": "session"}, [3, 2, 2]),
        ({"hold_property": "plan"}, [3, 2, 2]),
        ({"steps": [{"event": "view"}, {"event": "cart", "optional": True}, {"event": "buy"}]},
         [3, 2, 2]),
    ],
)  # fmt: skip
def test_adhoc_report_options(
    client: TestClient, ch: ClickHouse, change: dict[str, Any], visitors: list[int]
) -> None:
    events(
        ch,
        [
            ("v1", "view", 0), ("v1", "cart", 60), ("v1", "buy", 120),
            ("v2", "view", 0), ("v2", "cart", 30), ("v2", "refund", 40), ("v2", "buy", 50),
            ("v3", "view", 0),
        ],
    )  # fmt: skip
    body = {"funnel": {**CHECKOUT, **change}, **RANGE}
    r = client.post("/v1/funnels/report", json=body, headers=READ)
    assert r.status_code == 200, r.text
    assert [s["visitors"] for s in r.json()["steps"]] == visitors


def test_in_progress_is_not_dropped(client: TestClient, ch: ClickHouse) -> None:
    events(ch, [("v1", "view", 0), ("v2", "view", 0), ("v2", "cart", 10)])
    body = {"funnel": CHECKOUT, "from": RANGE["from"], "to": "2025-01-01T00:30:00Z"}
    steps = client.post("/v1/funnels/report", json=body, headers=READ).json()["steps"]
    assert [(s["dropped"], s["in_progress"]) for s in steps] == [(0, 1), (0, 1), (0, 0)]
    later = {**body, "to": "2025-01-01T02:00:00Z"}  # the 1 h window has expired by then
    steps = client.post("/v1/funnels/report", json=later, headers=READ).json()["steps"]
    assert [(s["dropped"], s["in_progress"]) for s in steps] == [(1, 0), (1, 0), (0, 0)]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"steps": [{"event": "view"}]}, "steps_count"),
        ({"steps": [{"event": "view", "any_of": [{"event": "a"}]}, {"event": "b"}]}, "step_shape"),
        ({"steps": [{"event": "a", "within_seconds": 5}, {"event": "b"}]}, "step_window_invalid"),
        ({"exclusions": [{"event": "cart"}]}, "exclusion_is_step"),
        ({"exclusions": [{"event": "x", "from_step": 2, "to_step": 1}]}, "exclusion_range_invalid"),
        ({"order": "any", "exclusions": [{"event": "x"}]}, "option_not_supported"),
        ({"counting": "total", "order": "strict"}, "option_not_supported"),
        ({"window_seconds": 0}, "window_out_of_range"),
        (
            {"steps": [{"event": "view", "optional": True}, {"event": "cart"}]},
            "optional_step_invalid",
        ),
        ({"steps": "nope"}, "invalid_funnel"),
    ],
)
def test_invalid_definitions_have_stable_codes(
    client: TestClient, change: dict[str, Any], code: str
) -> None:
    r = client.post("/v1/funnels/report", json={"funnel": {**CHECKOUT, **change}}, headers=READ)
    assert r.status_code == 400
    assert r.json()["error"] == code


def test_saved_funnel_report_trend_and_live_flag(client: TestClient, ch: ClickHouse) -> None:
    events(ch, [("v1", "view", 0), ("v1", "cart", 5), ("v1", "buy", 9), ("v2", "view", 90000)])
    saved = client.post("/v1/funnels", json=CHECKOUT, headers=ADMIN).json()
    assert saved["live"] is True
    report = client.get("/v1/funnels/checkout/report", params=RANGE, headers=READ).json()
    assert [s["visitors"] for s in report["steps"]] == [2, 1, 1]
    trend = client.get(
        "/v1/funnels/checkout/trend", params={**RANGE, "interval": "day"}, headers=READ
    ).json()
    assert [(p["entered"], p["converted"], p["incomplete"]) for p in trend["points"]] == [
        (1, 1, False),
        (1, 0, False),
    ]

    windowed = {**CHECKOUT, "id": "windowed"}
    windowed["steps"] = [{"event": "view"}, {"event": "cart", "within_seconds": 3}]
    assert client.post("/v1/funnels", json=windowed, headers=ADMIN).json()["live"] is True
    report = client.get("/v1/funnels/windowed/report", params=RANGE, headers=READ).json()
    assert [s["visitors"] for s in report["steps"]] == [2, 0]  # cart came 5 s after view
    by_user = {**CHECKOUT, "id": "by_user", "count_by": "user"}
    assert client.post("/v1/funnels", json=by_user, headers=ADMIN).json()["live"] is True
    held_sessions = {**CHECKOUT, "id": "held", "count_by": "session", "hold_property": "sku"}
    assert client.post("/v1/funnels", json=held_sessions, headers=ADMIN).json()["live"] is True
    assert client.get("/v1/funnels/held/live", headers=READ).status_code == 200


def test_segment_on_report_and_trend(client: TestClient, ch: ClickHouse) -> None:
    """Only entities with an event matching every segment filter are counted; a bad filter
    is refused naming `segment[i]...`."""
    rows: list[tuple[Any, ...]] = []
    for i, (visitor, name, seconds, source) in enumerate(
        [
            ("v1", "view", 0, "google"), ("v1", "cart", 5, ""), ("v1", "buy", 9, ""),
            ("v2", "view", 0, "bing"), ("v2", "cart", 5, ""),
            ("v3", "view", 90000, ""), ("v3", "cart", 90001, "google"),
        ]
    ):  # fmt: skip
        ts = ms_to_datetime(T0 + seconds * 1000)
        props = {"utm_source": source} if source else {}
        rows.append(("shop", uuid.uuid4(), name, visitor, "", "", ts, ts, props, {}, 0, i))
    ch.insert_sync("events", rows, EVENT_COLUMNS)
    assert client.post("/v1/funnels", json=CHECKOUT, headers=ADMIN).status_code == 201
    google = {**RANGE, "segment": '[{"property": "utm_source", "op": "eq", "value": "google"}]'}
    report = client.get("/v1/funnels/checkout/report", params=google, headers=READ).json()
    assert [s["visitors"] for s in report["steps"]] == [2, 2, 1]
    everyone = client.get("/v1/funnels/checkout/report", params=RANGE, headers=READ).json()
    assert [s["visitors"] for s in everyone["steps"]] == [3, 3, 1]
    trend = client.get(
        "/v1/funnels/checkout/trend", params={**google, "interval": "day"}, headers=READ
    ).json()
    assert [(p["entered"], p["converted"]) for p in trend["points"]] == [(1, 1), (1, 0)]
    adhoc = client.post(
        "/v1/funnels/report",
        params={"segment": google["segment"]},
        json={"funnel": CHECKOUT, **RANGE},
        headers=READ,
    ).json()
    assert [s["visitors"] for s in adhoc["steps"]] == [2, 2, 1]

    bad = {**RANGE, "segment": '[{"property": "utm_source", "op": "bogus"}]'}
    r = client.get("/v1/funnels/checkout/report", params=bad, headers=READ)
    assert r.status_code == 400
    assert r.json()["field"] == "segment[0].op"


def test_report_and_trend_csv(client: TestClient, ch: ClickHouse) -> None:
    events(ch, [("v1", "view", 0), ("v1", "cart", 5), ("v1", "buy", 9), ("v2", "view", 90000)])
    assert client.post("/v1/funnels", json=CHECKOUT, headers=ADMIN).status_code == 201
    as_csv = {**READ, "Accept": "text/csv"}
    r = client.get("/v1/funnels/checkout/report", params=RANGE, headers=as_csv)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0][:4] == ["index", "event", "name", "visitors"]
    assert rows[0][-1] == "time_to_convert.avg_from_previous"
    assert [r[3] for r in rows[1:]] == ["2", "1", "1"]
    assert rows[3][rows[0].index("time_to_convert.median_from_start")] == "9.0"
    adhoc = client.post(
        "/v1/funnels/report", json={"funnel": CHECKOUT, **RANGE}, headers=as_csv
    ).text
    assert adhoc == r.text
    trend = client.get(
        "/v1/funnels/checkout/trend", params={**RANGE, "interval": "day"}, headers=as_csv
    )
    assert list(csv.reader(io.StringIO(trend.text))) == [
        ["bucket", "entered", "converted", "conversion", "incomplete"],
        ["2025-01-01T00:00:00+00:00", "1", "1", "1.0", "False"],
        ["2025-01-02T00:00:00+00:00", "1", "0", "0.0", "False"],
    ]


def test_trend_in_a_time_zone(client: TestClient, ch: ClickHouse) -> None:
    """23:30 UTC on Jan 1 is Jan 2 in Berlin; an unknown zone is refused by name."""
    events(ch, [("v1", "view", 23 * 3600 + 1800), ("v2", "view", 3600)])
    assert client.post("/v1/funnels", json=CHECKOUT, headers=ADMIN).status_code == 201
    url = "/v1/funnels/checkout/trend"
    berlin = client.get(url, params={**RANGE, "tz": "Europe/Berlin"}, headers=READ).json()
    assert berlin["tz"] == "Europe/Berlin"
    assert [(p["bucket"], p["entered"]) for p in berlin["points"]] == [
        ("2025-01-01T00:00:00+01:00", 1),
        ("2025-01-02T00:00:00+01:00", 1),
    ]
    utc = client.get(url, params=RANGE, headers=READ).json()
    assert [p["entered"] for p in utc["points"]] == [2]
    r = client.get(url, params={**RANGE, "tz": "Mars/Olympus"}, headers=READ)
    assert r.status_code == 400
    assert (r.json()["error"], r.json()["field"]) == ("invalid_time_zone", "tz")


def test_report_compared_with_another_period(client: TestClient, ch: ClickHouse) -> None:
    """Jan 2 against Jan 1 (previous) and against a given range: the other period's steps
    and the change per step, absolute and relative; bad combinations are refused by name."""
    day = 86400
    events(
        ch,
        [
            ("v1", "view", 0), ("v1", "cart", 5), ("v1", "buy", 9),
            ("v2", "view", day), ("v2", "cart", day + 5),
            ("v3", "view", day + 10), ("v4", "view", day + 20), ("v4", "cart", day + 21),
        ],
    )  # fmt: skip
    assert client.post("/v1/funnels", json=CHECKOUT, headers=ADMIN).status_code == 201
    url = "/v1/funnels/checkout/report"
    jan2 = {"from": "2025-01-02T00:00:00Z", "to": "2025-01-03T00:00:00Z"}
    body = client.get(url, params={**jan2, "compare": "previous"}, headers=READ).json()
    assert [s["visitors"] for s in body["steps"]] == [3, 2, 0]
    comparison = body["comparison"]
    assert comparison["from_"].startswith("2025-01-01T00:00:00")
    assert [s["visitors"] for s in comparison["steps"]] == [1, 1, 1]
    changes = comparison["changes"]
    assert [c["visitors_change"] for c in changes] == [2, 1, -1]
    assert [c["visitors_change_relative"] for c in changes] == [2.0, 1.0, -1.0]
    assert changes[1]["conversion_change"] == round(2 / 3 - 1, 6)
    given = {**jan2, "compare_start": "2025-01-02T00:00:00Z", "compare_end": "2025-01-02T12:00:00Z"}
    same = client.get(url, params=given, headers=READ).json()["comparison"]["changes"]
    assert [c["visitors_change"] for c in same] == [0, 0, 0]
    assert client.get(url, params=jan2, headers=READ).json()["comparison"] is None
    as_csv = client.get(
        url, params={**jan2, "compare": "previous"}, headers={**READ, "Accept": "text/csv"}
    )
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert [r[rows[0].index("visitors_change")] for r in rows[1:]] == ["2", "1", "-1"]

    for params, field in [
        ({**jan2, "compare": "previous", "compare_start": "2025-01-01"}, "compare"),
        ({**jan2, "compare_start": "2025-01-01"}, "compare_end"),
        ({**jan2, "compare_start": "2025-01-02", "compare_end": "2025-01-01"}, "compare_start"),
        ({**jan2, "compare_start": "yesterday", "compare_end": "2025-01-01"}, "compare_start"),
    ]:
        r = client.get(url, params=params, headers=READ)
        assert (r.status_code, r.json()["field"]) == (400, field), params
