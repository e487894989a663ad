"""A real run through the fixture storefront produces the expected funnel in the query API.

Real Chromium, the built snippet as `funnelstream serve` serves it at /v1/funnelstream.js,
real ingest (CORS, text/plain bodies, bot filtering, dedupe), the embedded processor and
the query API: nothing stands in for anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.browser.harness import DESKTOP_UA, SNIPPET, WATCH_ERRORS, Shop, wait_until
from tests.e2e.server import ADMIN, Server

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
EVER = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if not (ROOT / "funnelstream" / "cli.py").exists():
        pytest.skip("`funnelstream serve` is not there yet (funnelstream/cli.py)")
    srv = Server(tmp_path / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def real_shop(server: Server) -> Iterator[Shop]:
    shop = Shop(
        {"writeKey": "wk_test", "host": server.base, "allowAutomation": True, "flushInterval": 200},
        snippet_src=f"{server.base}/v1/funnelstream.js",
    )
    yield shop
    shop.stop()


def visit(browser: Browser, shop: Shop, steps: int, errors: list[str]) -> None:
    """One visitor in a fresh browser profile, going `steps` pages into the checkout."""
    context = browser.new_context(user_agent=DESKTOP_UA)
    context.add_init_script(WATCH_ERRORS)
    page: Page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{shop.url}/index.html?utm_source=e2e")
    clicks = [
        ("#to-product", "**/product.html"),
        ("#add-to-cart", "**/cart.html"),
        ("#checkout", "**/checkout.html"),
        ("#pay", "**/thank-you.html"),
    ]
    for selector, url in clicks[: steps - 1]:
        page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
        page.click(selector)
        page.wait_for_url(url)
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    errors.extend(page.evaluate("window.__pageErrors"))
    context.close()  # pagehide: whatever is still queued goes out now


def test_storefront_run_produces_the_funnel(
    browser: Browser, server: Server, real_shop: Shop
) -> None:
    script = httpx.get(f"{server.base}/v1/funnelstream.js", timeout=10)
    assert script.status_code == 200, "ingest serves the snippet"
    assert script.content == SNIPPET.read_bytes()
    assert "max-age" in script.headers.get("cache-control", "")

    started = datetime.now(UTC) - timedelta(minutes=5)
    errors: list[str] = []
    # Steps reached: page view, product view, add to cart, checkout started, purchase.
    for steps in (5, 5, 3, 2, 1):
        visit(browser, real_shop, steps, errors)
    assert not errors, f"the snippet threw into the page: {errors}"

    window = {
        "from": started.isoformat(),
        "to": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
    }

    def funnel() -> list[int] | None:
        steps = server.report(**window)["steps"]
        visitors = [int(s["visitors"]) for s in steps]
        return visitors if visitors == [5, 4, 3, 2, 2] else None

    try:
        wait_until(funnel, 60, "the funnel in the query API")
    except AssertionError:
        raise AssertionError(f"report: {server.report(**window)}") from None
    report = server.report(**window)
    assert [s["event"] for s in report["steps"]] == [
        "page_view",
        "product_view",
        "add_to_cart",
        "checkout_started",
        "purchase",
    ]


def device(browser: Browser, shop: Shop, start: str, clicks: list[tuple[str, str]]) -> Page:
    """A fresh browser profile (another device) opening `start`, then clicking through."""
    context = browser.new_context(user_agent=DESKTOP_UA)
    page: Page = context.new_page()
    page.goto(f"{shop.url}/{start}")
    for selector, url in clicks:
        page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
        page.click(selector)
        page.wait_for_url(url)
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    return page


def test_one_customer_on_two_devices_counts_once_by_user(
    browser: Browser, server: Server, real_shop: Shop
) -> None:
    """A customer adds to cart on one device and logs in; later logs in on another device
    and pays there. By visitor that is two half funnels; by user one whole funnel, live
    (the processor rebuilds the user from both devices' events) and in the report."""
    steps = [{"event": s} for s in ("add_to_cart", "checkout_started", "purchase")]
    for count_by in ("visitor", "user"):
        definition = {"id": f"by_{count_by}", "steps": steps, "count_by": count_by}
        r = httpx.post(f"{server.base}/v1/funnels", json=definition, headers=ADMIN, timeout=30)
        assert r.status_code == 201 and r.json()["live"] is True, r.text

    laptop = device(
        browser,
        real_shop,
        "index.html",
        [("#to-product", "**/product.html"), ("#add-to-cart", "**/cart.html")],
    )
    laptop.evaluate("funnelstream('identify', 'customer-7')")
    laptop.context.close()
    phone = device(browser, real_shop, "cart.html", [])
    phone.evaluate("funnelstream('identify', 'customer-7')")
    phone.click("#checkout")
    phone.wait_for_url("**/checkout.html")
    phone.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    phone.click("#pay")
    phone.wait_for_url("**/thank-you.html")
    phone.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    phone.context.close()

    def reached(funnel: str, want: list[int]) -> bool | None:
        live = [s["reached"] for s in server.live(funnel)["stages"]]
        report = [s["visitors"] for s in server.report(funnel, **EVER)["steps"]]
        return True if live == report == want else None

    wait_until(lambda: reached("by_user", [1, 1, 1]), 60, "one customer through the funnel")
    # By visitor: the laptop added to cart; the phone never did, so its checkout is no step.
    assert reached("by_visitor", [1, 0, 0])
