"""The whole path through a real `funnelstream serve` process: HTTP → log → processor →
ClickHouse (chdb) → report."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from funnelstream.demo import storefront
from tests.e2e.server import ADMIN, READ, Server

pytestmark = pytest.mark.clickhouse

FROM = "2020-01-01T00:00:00Z"
TO = "2100-01-01T00:00:00Z"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data").start()
    yield s
    s.stop()


def test_events_in_exact_funnel_out(server: Server) -> None:
    traffic = storefront(visitors=600, start_ms=int(time.time() * 1000) - 7200_000, seed=3)
    for i in range(0, len(traffic.events), 250):
        r = server.post({"batch": traffic.events[i : i + 250]})
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": len(traffic.events[i : i + 250])}
    server.wait_processed()

    report = server.report(**{"from": FROM, "to": TO})
    assert [s["visitors"] for s in report["steps"]] == traffic.reached
    first = traffic.reached[0]
    assert [s["conversion_from_start"] for s in report["steps"]] == [
        round(r / first, 6) for r in traffic.reached
    ]
    # The 1-day window is still open for this recent traffic: who stopped is in progress.
    stopped = [a - b for a, b in zip(traffic.reached, traffic.reached[1:], strict=False)] + [0]
    assert [s["dropped"] + s["in_progress"] for s in report["steps"]] == stopped
    assert [s["dropped"] for s in report["steps"]] == [0] * 5
    assert report["steps"][0]["median_seconds_from_start"] == 0
    assert report["steps"][1]["median_seconds_from_start"] > 0

    live = server.live()
    assert [s["reached"] for s in live["stages"]] == traffic.reached


def test_single_event_text_plain_gzip_and_body_key(server: Server) -> None:
    now = int(time.time() * 1000)
    single = {"event": "page_view", "visitor_id": "solo", "timestamp": now - 5000}
    r = httpx.post(
        f"{server.base}/v1/events",
        content=orjson.dumps({**single, "write_key": "wk_test"}),
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 202, r.text
    body = gzip.compress(
        orjson.dumps(
            {
                "batch": [{"event": "product_view", "visitor_id": "solo", "timestamp": now}],
                "write_key": "wk_test",
            }
        )
    )
    r = httpx.post(
        f"{server.base}/v1/events",
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 202, r.text
    server.wait_processed()
    steps = server.report(**{"from": FROM, "to": TO})["steps"]
    assert [s["visitors"] for s in steps] == [1, 1, 0, 0, 0]


def test_bad_input_gets_clear_errors(server: Server) -> None:
    now = int(time.time() * 1000)
    r = server.post(
        {
            "batch": [
                {"event": "page_view", "visitor_id": "ok", "timestamp": now},
                {"event": "page_view", "timestamp": now},
                {"event": "page_view", "visitor_id": "x", "timestamp": "yesterday"},
            ]
        }
    )
    assert r.status_code == 207
    assert r.json() == {
        "accepted": 1,
        "errors": [
            {"index": 1, "field": "visitor_id", "message": "is required"},
            {"index": 2, "field": "timestamp", "message": "must be ISO-8601 or epoch milliseconds"},
        ],
    }
    r = server.post([1, 2, 3])
    assert r.status_code == 400 and r.json()["error"] == "invalid_shape"
    r = httpx.post(f"{server.base}/v1/events", content=b"{nope", headers=READ)
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"  # a read key
    r = httpx.post(
        f"{server.base}/v1/events", content=b"{nope", headers={"Authorization": "Bearer wk_nope"}
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_write_key"
    r = httpx.post(
        f"{server.base}/v1/events", content=b"{nope", headers={"Authorization": "Bearer wk_test"}
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = httpx.post(
        f"{server.base}/v1/events",
        content=b"x" * (1024 * 1024 + 1),
        headers={"Authorization": "Bearer wk_test"},
    )
    assert r.status_code == 413
    r = httpx.get(
        f"{server.base}/v1/funnels/checkout/report", params={"from": "soon"}, headers=READ
    )
    assert r.status_code == 400 and r.json()["field"] == "from"
    r = httpx.get(f"{server.base}/v1/funnels/nope/report", headers=READ)
    assert r.status_code == 404


def test_import_history_through_the_same_path(server: Server, tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    history.write_text(
        "event,visitor_id,timestamp,properties.url\n"
        "page_view,h1,2024-03-01T10:00:00Z,/\n"
        "product_view,h1,2024-03-01T10:01:00Z,/p/1\n"
        "add_to_cart,h1,2024-03-01T10:02:00Z,/cart\n"
        "page_view,h2,2024-03-02T09:00:00Z,/\n"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "funnelstream.cli",
            "import",
            str(history),
            "--host",
            server.base,
            "--write-key",
            "wk_test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "imported 4 events" in out.stdout
    server.wait_processed()
    steps = server.report(**{"from": "2024-03-01T00:00:00Z", "to": "2024-04-01T00:00:00Z"})
    assert [s["visitors"] for s in steps["steps"]] == [2, 1, 1, 0, 0]


def test_saving_a_funnel_backfills_its_live_state(server: Server) -> None:
    traffic = storefront(visitors=300, start_ms=int(time.time() * 1000) - 7200_000, seed=5)
    assert server.post({"batch": traffic.events}).status_code == 202
    server.wait_processed()
    # A funnel defined after the fact: add_to_cart → purchase.
    definition = {
        "id": "cart_to_purchase",
        "window_seconds": 86400,
        "steps": [{"event": "add_to_cart"}, {"event": "purchase"}],
    }
    r = httpx.post(f"{server.base}/v1/funnels", json=definition, headers=ADMIN, timeout=30)
    assert r.status_code == 201, r.text
    expected = traffic.reached[2:5:2]  # reached add_to_cart, reached purchase
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = server.live("cart_to_purchase")
        if [s["reached"] for s in live["stages"]] == expected:
            break
        time.sleep(0.2)
    assert [s["reached"] for s in live["stages"]] == expected
    report = server.report("cart_to_purchase", **{"from": FROM, "to": TO})
    assert [s["visitors"] for s in report["steps"]] == expected
    # New events keep advancing the backfilled state.
    now = int(time.time() * 1000)
    assert (
        server.post(
            {
                "batch": [
                    {"event": "add_to_cart", "visitor_id": "late-1", "timestamp": now - 1000},
                    {"event": "purchase", "visitor_id": "late-1", "timestamp": now},
                ]
            }
        ).status_code
        == 202
    )
    server.wait_processed()
    live = server.live("cart_to_purchase")
    assert [s["reached"] for s in live["stages"]] == [expected[0] + 1, expected[1] + 1]


LIVE_OPTIONS = [
    {
        "id": "strict_browse",
        "order": "strict",
        "window_seconds": 1800,
        "steps": [{"event": "product_view"}, {"event": "add_to_cart"}, {"event": "checkout"}],
    },
    {
        "id": "no_help",
        "window_seconds": 3600,
        "steps": [
            {"event": "page_view"},
            {"event": "product_view", "optional": True},
            {"event": "add_to_cart", "within_seconds": 600},
            {"event": "purchase"},
        ],
        "exclusions": [{"event": "help", "from_step": 0, "to_step": 2}],
    },
    {
        "id": "same_product_attempts",
        "window_seconds": 3600,
        "counting": "total",
        "steps": [{"event": "product_view"}, {"event": "add_to_cart"}],
    },
    {
        "id": "any_order_cart",
        "order": "any",
        "window_seconds": 900,
        "steps": [{"event": "product_view"}, {"event": "add_to_cart"}, {"event": "checkout"}],
    },
    {
        "id": "per_session",
        "count_by": "session",
        "window_seconds": 3600,
        "steps": [{"event": "page_view"}, {"event": "product_view"}, {"event": "add_to_cart"}],
        "exclusions": [{"event": "help", "from_step": 1, "to_step": 2}],
    },
    {
        "id": "per_user",
        "count_by": "user",
        "window_seconds": 3600,
        "steps": [{"event": "page_view"}, {"event": "add_to_cart"}, {"event": "purchase"}],
        "exclusions": [{"event": "help", "from_step": 1, "to_step": 2}],
    },
    {
        "id": "per_user_same_product",
        "count_by": "user",
        "hold_property": "product_id",
        "window_seconds": 3600,
        "steps": [{"event": "product_view"}, {"event": "add_to_cart"}],
    },
    {
        "id": "same_product_per_session",
        "count_by": "session",
        "hold_property": "product_id",
        "window_seconds": 3600,
        "steps": [{"event": "product_view"}, {"event": "add_to_cart"}, {"event": "checkout"}],
    },
    {
        "id": "same_product",
        "window_seconds": 3600,
        "hold_property": "product_id",
        "steps": [{"event": "product_view"}, {"event": "add_to_cart"}, {"event": "purchase"}],
    },
]


def noisy_traffic(visitors: int, start_ms: int, seed: int) -> list[dict[str, object]]:
    """Visitors wandering: repeated steps, other events, help requests, several products,
    now and then a pause long enough (30 minutes) to start a new session."""
    import random

    rng = random.Random(seed)
    names = ["page_view", "product_view", "add_to_cart", "checkout", "purchase", "help", "search"]
    weights = [4, 4, 3, 2, 1, 1, 2]
    events: list[dict[str, object]] = []
    for v in range(visitors):
        ts = start_ms + rng.randrange(0, 3_600_000)
        # Some visitors log in after a few events, as one of a few users (several
        # devices per user); some switch to another account later.
        user, identify_at = f"user{rng.randrange(visitors // 4)}", rng.choice([0, 2, 5, 99])
        for k in range(rng.randrange(1, 14)):
            ts += rng.choice([0, 1_000, 30_000, 200_000, 700_000, 1_800_000])
            if k == 8 and rng.random() < 0.3:
                user = f"user{rng.randrange(visitors // 4)}"
            event: dict[str, object] = {
                "event": rng.choices(names, weights)[0],
                "visitor_id": f"w{v}",
                "timestamp": ts,
                "properties": {"product_id": rng.choice(["p1", "p2", "p3"])},
            }
            if k >= identify_at:
                event["user_id"] = user
            events.append(event)
    events.sort(key=lambda e: int(str(e["timestamp"])))
    return events


def test_live_counts_equal_the_report_for_every_live_option(server: Server) -> None:
    """Strict and any order, optional steps, per-step windows, exclusions, total attempts,
    sessions, users (several visitors each, identified mid-way) and a held property: the
    processor's live stages (funnels advanced as events arrive, one backfilled when saved
    afterwards) equal the report over the same raw events."""
    for definition in LIVE_OPTIONS[:-1]:
        r = httpx.post(f"{server.base}/v1/funnels", json=definition, headers=ADMIN, timeout=30)
        assert r.status_code == 201 and r.json()["live"] is True, r.text
    events = noisy_traffic(400, int(time.time() * 1000) - 10 * 3600_000, seed=11)
    for i in range(0, len(events), 500):
        assert server.post({"batch": events[i : i + 500]}).status_code == 202
    server.wait_processed()
    r = httpx.post(f"{server.base}/v1/funnels", json=LIVE_OPTIONS[-1], headers=ADMIN, timeout=30)
    assert r.status_code == 201, r.text
    for definition in LIVE_OPTIONS:
        funnel = str(definition["id"])
        report = [s["visitors"] for s in server.report(funnel, **{"from": FROM, "to": TO})["steps"]]
        assert report[0] > 0 and report[-1] > 0, (funnel, report)  # not a vacuous check
        deadline = time.monotonic() + 60
        while True:
            live = [s["reached"] for s in server.live(funnel)["stages"]]
            if live == report or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert live == report, funnel
