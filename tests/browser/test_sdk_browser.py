"""posthog-js and @segment/analytics-next, as npm ships them (tests/sdk/node, installed by
scripts/setup.sh), in real Chromium on a fixture page, sending to a running `funnelstream
serve`: the page view arrives as `page_view` with its URL and campaign, the click's event
and identify arrive too, and the funnel over them is exact."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from tests.browser.harness import DESKTOP_UA, WATCH_ERRORS, free_port, wait_until
from tests.e2e.server import READ, Server

pytestmark = [pytest.mark.browser, pytest.mark.clickhouse]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sdk"
NODE_MODULES = Path(__file__).resolve().parents[1] / "sdk" / "node" / "node_modules"


class Pages(SimpleHTTPRequestHandler):
    """The fixture pages at /, the npm packages at /vendor/."""

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0]
        if clean.startswith("/vendor/"):
            return str(NODE_MODULES / clean.removeprefix("/vendor/"))
        return str(FIXTURES / clean.lstrip("/"))

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("sdk-browser") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    assert NODE_MODULES.is_dir(), "run scripts/setup.sh (npm ci in tests/sdk/node)"
    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Pages))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    # "localhost": another origin than the server's 127.0.0.1, as a shop and its ingest.
    yield f"http://localhost:{port}"
    httpd.shutdown()
    httpd.server_close()


def stored_events(server: Server) -> int:
    r = httpx.get(f"{server.base}/v1/stats", headers=READ, timeout=30)
    return int(r.json()["events"])


def journey_report(server: Server, page_name: str) -> list[int]:
    """Visitors per step of: the page view of this SDK's page (its URL, the campaign of
    its query) → identify → the click's event."""
    funnel = {
        "window_seconds": 86400,
        "steps": [
            {
                "event": "page_view",
                "filters": [
                    {"property": "url", "op": "contains", "value": f"/{page_name}.html"},
                    {"property": "utm_source", "op": "eq", "value": "mail"},
                ],
            },
            {"event": "identify"},
            {"event": "Order Completed"},
        ],
    }
    r = httpx.post(
        f"{server.base}/v1/funnels/report",
        json={"funnel": funnel, "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
        headers=READ,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return [int(s["visitors"]) for s in r.json()["steps"]]


@pytest.mark.parametrize("page_name", ["posthog", "segment"])
def test_browser_sdk_sends_page_view_identify_and_click(
    browser: Browser, server: Server, pages: str, page_name: str
) -> None:
    before = stored_events(server)
    errors: list[str] = []
    context = browser.new_context(user_agent=DESKTOP_UA)
    context.add_init_script(WATCH_ERRORS)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{pages}/{page_name}.html?utm_source=mail&key=wk_test&host={server.base}")

    def stored(count: int) -> bool:
        server.wait_processed()
        return stored_events(server) >= before + count

    wait_until(lambda: stored(1), 30, f"{page_name}'s page view")
    # Signed in, then a purchase a moment later: each request's time is corrected for
    # the client's clock skew by its own network delay, so two calls in one millisecond
    # may be stored in either order.
    page.click("#signin")
    wait_until(lambda: stored(2), 30, f"{page_name}'s identify")
    page.click("#buy")
    wait_until(lambda: stored(3), 30, f"{page_name}'s order")
    context.close()
    assert not errors, errors
    assert journey_report(server, page_name) == [1, 1, 1]
