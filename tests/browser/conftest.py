"""Fixtures for the browser tests (marked `browser`): Debian's Chromium, the stand-in
ingest, the fixture storefront, and a page that fails its test if the snippet throws into
it. The servers and helpers live in harness.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.browser.harness import (
    CHROMIUM,
    DESKTOP_UA,
    LAUNCH_ARGS,
    WATCH_ERRORS,
    FakeIngest,
    Shop,
)


@pytest.fixture(scope="package")
def chromium() -> Iterator[Browser]:
    # Package scope, not session: Playwright's sync API keeps an event loop running on
    # this thread while it is open, and asyncio tests elsewhere need that thread free.
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: run deploy/browser/install.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser(request: pytest.FixtureRequest, chromium: Browser) -> Browser:
    if request.node.get_closest_marker("browser") is None:
        pytest.fail("a test using Chromium must be marked @pytest.mark.browser")
    return chromium


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    server = FakeIngest()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shop(ingest: FakeIngest) -> Iterator[Shop]:
    server = Shop(
        {
            "writeKey": "wk_test",
            "host": ingest.url,
            "allowAutomation": True,  # Playwright sets navigator.webdriver
            "flushInterval": 200,
        },
    )
    yield server
    server.stop()


class PageErrors(list[str]):
    """Errors the snippet let into pages: `pageerror` events and the pages' own handlers."""


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(user_agent=DESKTOP_UA)
    ctx.add_init_script(WATCH_ERRORS)
    yield ctx
    ctx.close()


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(context: BrowserContext, page_errors: PageErrors) -> Iterator[Page]:
    pg = context.new_page()
    pg.on("pageerror", lambda exc: page_errors.append(str(exc)))
    yield pg
    if not pg.is_closed():
        # A page mid-navigation has nothing to say.
        with contextlib.suppress(Exception):
            page_errors.extend(pg.evaluate("window.__pageErrors || []"))
    assert not page_errors, f"the snippet threw into the page: {page_errors}"
