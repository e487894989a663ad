"""The analyst page in real Chromium against a real `funnelstream serve --demo`: every number
the page shows (funnel steps, breakdown, live stages, board totals) equals the API's, the
live counts move over the SSE stream without a reload, and the read key stays in the page.

`FUNNELSTREAM_PAGE_SCREENSHOT=docs/analyst-page.png` also saves the README's screenshot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.browser.harness import wait_until
from tests.e2e.server import READ, WRITE, Server

pytestmark = pytest.mark.browser

DEMO_VISITORS = 2000


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (Path(__file__).resolve().parents[2] / "query_api/static/vendor/uplot.min.js").exists():
        pytest.fail("the chart library is not vendored: run scripts/setup.sh")
    server = Server(tmp_path_factory.mktemp("page"), args=["--demo"]).start(timeout=180)
    try:
        wait_until(lambda: first_step(server) == DEMO_VISITORS, timeout=180)
        yield server
    finally:
        server.stop()


def first_step(server: Server) -> int:
    r = httpx.get(f"{server.base}/v1/funnels/checkout/report", headers=READ, timeout=30)
    return int(r.json()["steps"][0]["visitors"]) if r.status_code == 200 else -1


def api(server: Server, path: str, **params: Any) -> Any:
    r = httpx.get(f"{server.base}{path}", params=params, headers=READ, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def values(page: Page, selector: str) -> list[list[str]]:
    """Per table row, the exact numbers the page put in its cells' data-value."""
    out: list[list[str]] = page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rows => rows.map(r => [...r.querySelectorAll('td[data-value]')]"
        ".map(td => td.dataset.value))",
    )
    return out


def as_text(*numbers: Any) -> list[str]:
    """Numbers as the page's JavaScript writes them (String(n))."""
    return [
        str(n) if not isinstance(n, float) or not n.is_integer() else str(int(n)) for n in numbers
    ]


def test_the_page_shows_the_apis_numbers_and_follows_live(demo: Server, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1500})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{demo.base}/app")
    page.fill("#key", "rk_test")
    page.click("#key-form button")
    page.wait_for_selector("#pick:not([hidden])")
    page.select_option("#funnel", "checkout")
    page.click("#pick button")
    # Functions, not expressions: the page's CSP forbids evaluating strings.
    page.wait_for_function("() => document.body.dataset.loaded === 'checkout'", timeout=60_000)
    assert page.text_content("#status") == ""
    start, end = page.input_value("#from"), page.input_value("#to")
    span = {"from": f"{start}T00:00:00Z", "to": f"{end}T00:00:00Z"}

    report = api(demo, "/v1/funnels/checkout/report", **span)
    assert values(page, "#steps") == [
        as_text(
            s["visitors"],
            s["conversion_from_start"],
            s["conversion_from_previous"],
            s["dropped"],
            s["in_progress"],
            "" if s["median_seconds_from_start"] is None else s["median_seconds_from_start"],
        )
        for s in report["steps"]
    ]
    assert report["steps"][0]["visitors"] == DEMO_VISITORS

    breakdown = api(demo, "/v1/funnels/checkout/breakdown", **span, property="utm_source", limit=8)
    assert values(page, "#breakdown") == [
        as_text(*(s["visitors"] for s in g["steps"]), g["steps"][-1]["conversion_from_start"])
        for g in breakdown["groups"]
    ]
    trend = api(demo, "/v1/funnels/checkout/trend", **span, interval="day")
    assert page.get_attribute("#trend-chart", "data-points") == str(len(trend["points"]))
    assert page.locator("#funnel-chart canvas").count() == 1  # drawn by the chart library

    live = api(demo, "/v1/funnels/checkout/live", minutes=15)
    assert [row[:2] for row in values(page, "#live")] == [
        as_text(s["at_stage"], s["reached"]) for s in live["stages"]
    ]
    board = api(demo, "/v1/funnels/checkout/board", property="utm_source", limit=50)
    totals = page.get_attribute("#board-totals", "data-values")
    assert totals == ",".join(str(s["visitors"]) for s in board["stages"])
    assert totals == ",".join(str(s["at_stage"]) for s in live["stages"])
    shown = page.eval_on_selector_all("#board tbody tr", "rows => rows.map(r => r.dataset.key)")
    assert shown == [v["visitor_id"] for v in board["visitors"]]

    if target := os.environ.get("FUNNELSTREAM_PAGE_SCREENSHOT"):
        page.screenshot(path=target)  # the viewport: report, live and the board's top

    # A new visitor reaches step 1: the stream tells the page, which shows the new count.
    before = live["stages"][0]["at_stage"]
    now_ms = int(time.time() * 1000)
    sent = httpx.post(
        f"{demo.base}/v1/events",
        json={"event": "page_view", "visitor_id": "page-test-visitor", "timestamp": now_ms},
        headers=WRITE,
        timeout=30,
    )
    assert sent.status_code == 202, sent.text
    page.wait_for_function(
        "n => document.querySelector('#live tbody td[data-value]').dataset.value === n",
        arg=str(before + 1),
        timeout=60_000,
    )
    assert "following" in (page.text_content("#live-state") or "")

    # The key stayed in the page: not in its URL, storage or cookies.
    assert "rk_test" not in page.url
    kept = page.evaluate("JSON.stringify([localStorage, sessionStorage]) + document.cookie")
    assert "rk_test" not in kept
    assert errors == []
    context.close()
