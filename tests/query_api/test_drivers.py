"""Conversion drivers on generated data with planted drivers, over a real engine: the
counts per feature are exact (known from the generator), the planted driver of
converting comes out first, the planted driver of dropping first the other way, and
noise features are not significant after the correction."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnel.compiled import compile_funnel
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from processor.rows import EVENT_COLUMNS, SESSION_COLUMNS, ms_to_datetime
from query_api.drivers import Feature, features_from_rows, rank
from query_api.routes.drivers import router
from query_api.sql.drivers import drivers_sql
from schemas.funnels import FunnelDefinition, PropertyFilter

pytestmark = pytest.mark.clickhouse

T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
START, END = ms_to_datetime(T0), ms_to_datetime(T0 + 86_400_000)
FUNNEL = FunnelDefinition.model_validate(
    {
        "id": "checkout",
        "project": "shop",
        "window_seconds": 3600,
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
    }
)


def plant(ch: ClickHouse) -> dict[str, Any]:
    """300 visitors view and add to cart. Between cart and buy, one who used the "chat"
    converts with probability 0.8, one who saw "shipping_costs" with 0.05, others 0.3;
    every visitor sends noise events ("scroll", "hover") at random. The cart event carries
    coupon=yes for a third of them (converting 0.6 more often: a property driver).
    Sessions: device mobile or desktop at random (noise)."""
    rng = random.Random(11)
    rows: list[tuple[Any, ...]] = []
    sessions: list[tuple[Any, ...]] = []
    truth: dict[str, list[int]] = {}

    def count(feature: str, converted: bool) -> None:
        truth.setdefault(feature, [0, 0])[0 if converted else 1] += 1

    for i in range(300):
        v = f"v{i}"
        t = T0 + i * 60_000
        chat, shipping = rng.random() < 0.3, rng.random() < 0.2
        coupon = rng.random() < 1 / 3
        p = 0.8 if chat else 0.05 if shipping else 0.3
        p = min(1.0, p + (0.2 if coupon else 0.0))
        converted = rng.random() < p
        device = rng.choice(["mobile", "desktop"])
        evs = [("view", t, {}), ("cart", t + 1000, {"coupon": "yes"} if coupon else {})]
        between = [name for name, on in (("chat", chat), ("shipping_costs", shipping)) if on]
        between += [n for n in ("scroll", "hover") if rng.random() < 0.5]
        evs += [(name, t + 2000 + j, {}) for j, name in enumerate(between)]
        if converted:
            evs.append(("buy", t + 5000, {}))
        for name in set(between):
            count(f"event:{name}", converted)
        if coupon:
            count("property:coupon=yes", converted)
        count(f"session:device={device}", converted)
        for j, (name, ms, props) in enumerate(evs):
            ts = ms_to_datetime(ms)
            rows.append(("shop", uuid.uuid4(), name, v, "", "", ts, ts, props, {}, 0, i * 10 + j))
        sessions.append(
            ("shop", v, f"{v}-s", ms_to_datetime(t), ms_to_datetime(t + 6000), len(evs), "",
             "", "", "", "", device, "", "", "", 1, 0)
        )  # fmt: skip
        count("total", converted)
    ch.insert_sync("events", rows, EVENT_COLUMNS)
    ch.insert_sync("sessions", sessions, SESSION_COLUMNS)
    return truth


def test_planted_drivers_come_out_first(ch: ClickHouse) -> None:
    truth = plant(ch)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    sql = drivers_sql(compile_funnel(FUNNEL), "shop", START, END, now, 1, 100)
    converted, dropped, features = features_from_rows(ch.query_rows_sync(*sql))
    assert [converted, dropped] == truth["total"]
    got = {f"{f.kind}:{f.name}" + (f"={f.value}" if f.value else ""): f for f in features}
    for key, (c, d) in truth.items():
        if key == "total":
            continue
        assert (got[key].converted_with, got[key].dropped_with) == (c, d), key
    # Only what the generator made: no step events, no other properties or fields.
    assert set(got) == set(truth) - {"total"}

    # A segment: only the entities with a coupon event; their totals are the coupon's.
    coupon = (PropertyFilter(property="coupon", op="eq", value="yes"),)
    sql = drivers_sql(compile_funnel(FUNNEL), "shop", START, END, now, 1, 100, coupon)
    in_segment = features_from_rows(ch.query_rows_sync(*sql))
    assert [in_segment[0], in_segment[1]] == truth["property:coupon=yes"]

    drivers = rank(converted, dropped, features, min_support=5, top=5)
    first_up, first_down = drivers.converting[0], drivers.dropping[0]
    assert (first_up.feature.kind, first_up.feature.name) == ("event", "chat")
    assert first_up.odds_ratio > 1 and first_up.odds_ratio_low > 1
    assert (first_down.feature.kind, first_down.feature.name) == ("event", "shipping_costs")
    assert first_down.odds_ratio_high < 1
    # Every tested feature listed, so the noise cannot miss the lists and pass unchecked.
    every = rank(converted, dropped, features, min_support=5, top=len(features))
    noise = [d for d in every.converting + every.dropping if d.feature.name in ("scroll", "hover")]
    assert sorted(d.feature.name for d in noise) == ["hover", "scroll"]
    assert all(d.p_value_adjusted > 0.05 for d in noise)


def test_min_support_and_top() -> None:
    features = [
        Feature("event", "rare", "", 3, 0),
        Feature("event", "strong", "", 40, 5),
        Feature("event", "weak", "", 30, 25),
        Feature("event", "against", "", 5, 40),
    ]
    drivers = rank(100, 100, features, min_support=5, top=1)
    assert drivers.tested == 3  # "rare" has 3 entities
    assert [d.feature.name for d in drivers.converting] == ["strong"]
    assert [d.feature.name for d in drivers.dropping] == ["against"]
    # The odds ratio of "strong": (40 / 5) / (60 / 95).
    assert drivers.converting[0].odds_ratio == pytest.approx((40 * 95) / (5 * 60))


def test_route_answers_and_refuses(ch: ClickHouse) -> None:
    """Through the app: the planted driver first, and a step out of range named."""
    plant(ch)
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog([FUNNEL])
    app.state.project_config = ProjectConfig(
        projects=(Project("shop", SecretStr("wk"), SecretStr("rk")),), funnels=()
    )
    app.include_router(router)
    params = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-02T00:00:00Z", "step": "1"}
    with TestClient(app) as client:
        headers = {"Authorization": "Bearer rk"}
        r = client.get("/v1/funnels/checkout/drivers", params=params, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["converting"][0]["name"] == "chat"
        assert r.json()["dropping"][0]["name"] == "shipping_costs"
        as_csv = client.get(
            "/v1/funnels/checkout/drivers", params=params, headers={**headers, "Accept": "text/csv"}
        )
        lines = [line.split(",") for line in as_csv.text.splitlines()]
        assert lines[0][:4] == ["direction", "kind", "name", "value"]
        assert lines[1][:3] == ["converting", "event", "chat"]
        bad = client.get(
            "/v1/funnels/checkout/drivers", params={**params, "step": "2"}, headers=headers
        )
        assert bad.status_code == 400 and bad.json()["field"] == "step"
