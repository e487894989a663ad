"""The storefront snippet in real Chromium, against the stand-in ingest (see harness.py).

What a shop relies on: the funnel's events arrive, with the context funnels and
attribution need; nothing is lost on unload, offline, or while the server is down or
busy; nothing is sent twice as a new event (each carries its event_id); consent and
opt-out are obeyed; and the page never sees an error from us.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.browser.harness import (
    DESKTOP_UA,
    FakeIngest,
    Reply,
    Shop,
    open_page,
    stored_queue,
    wait_until,
)

pytestmark = pytest.mark.browser

FUNNEL_RUN = [
    "page_view",
    "page_view",
    "product_view",
    "add_to_cart",
    "page_view",
    "checkout_started",
    "page_view",
    "purchase",
    "page_view",
]


def by_index(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (e["timestamp"], e["properties"]["event_index"]))


def fs_storage(page: Page) -> dict[str, str]:
    keys: dict[str, str] = page.evaluate(
        "Object.fromEntries(Object.keys(localStorage).filter(k => k.startsWith('fs_'))"
        ".map(k => [k, localStorage.getItem(k)]))"
    )
    return keys


def fs_cookies(context: BrowserContext) -> dict[str, str]:
    return {c["name"]: c["value"] for c in context.cookies() if c["name"].startswith("fs_")}


def track(page: Page, name: str, props: dict[str, Any] | None = None) -> None:
    page.evaluate("([n, p]) => funnelstream.track(n, p)", [name, props or {}])


# ---- a run through the shop ----


def test_multi_page_run_sends_the_funnel_with_context(
    page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    open_page(page, f"{shop.url}/index.html?utm_source=newsletter&utm_campaign=spring&gclid=g1")
    page.click("#to-product")
    page.wait_for_url("**/product.html")
    page.click("#add-to-cart")
    page.wait_for_url("**/cart.html")
    page.click("#checkout")
    page.wait_for_url("**/checkout.html")
    page.click("#pay")
    page.wait_for_url("**/thank-you.html")

    wait_until(lambda: len(ingest.unique()) >= len(FUNNEL_RUN), 15, "the whole run")
    events = by_index(list(ingest.unique().values()))
    assert [e["event"] for e in events] == FUNNEL_RUN
    # One visitor, one session, and an in-session index with no gap.
    assert len({e["visitor_id"] for e in events}) == 1
    assert len({e["session_id"] for e in events}) == 1
    assert [e["properties"]["event_index"] for e in events] == list(range(1, 10))
    for e in events:
        uuid.UUID(e["event_id"])
        uuid.UUID(e["visitor_id"])
        assert isinstance(e["timestamp"], int)

    home, product_page = events[0], events[1]
    assert home["properties"]["path"] == "/index.html"
    assert home["properties"]["title"] == "Home · Fixture Shop"
    assert home["properties"]["utm_source"] == "newsletter"
    assert home["properties"]["utm_campaign"] == "spring"
    assert home["properties"]["gclid"] == "g1"
    assert "referrer" not in home["properties"]
    assert product_page["properties"]["referrer"].startswith(f"{shop.url}/index.html")
    assert "utm_source" not in product_page["properties"]
    assert events[3]["properties"] == {
        "path": "/product.html",
        "sku": "TEE-1",
        "quantity": 1,
        "event_index": 4,
    }
    assert events[7]["properties"]["revenue"] == 25

    # Simple CORS requests only: text/plain, no preflight, no credentials, key in the body.
    posts = ingest.posts()
    assert not [r for r in ingest.requests if r.method == "OPTIONS"]
    for r in posts:
        assert r.headers["user-agent"] == DESKTOP_UA
        assert r.headers["content-type"].startswith("text/plain")
        assert "cookie" not in r.headers and "authorization" not in r.headers
        assert r.json["write_key"] == "wk_test"
        assert isinstance(r.json["sent_at"], int)
    # Events sent during unload may be sent again by the next page; never as new events.
    assert len(ingest.unique()) == len(FUNNEL_RUN)


def test_spa_page_views_follow_history(page: Page, shop: Shop, ingest: FakeIngest) -> None:
    open_page(page, f"{shop.url}/spa/?utm_source=ads")
    page.click("#nav-product")
    page.click("#add-to-cart")
    page.evaluate("history.replaceState({}, '', location.href)")  # same page: no view
    page.evaluate("history.replaceState({}, '', '/spa/cart?step=review')")
    page.go_back()  # popstate

    def views() -> list[dict[str, Any]]:
        return [e for e in by_index(list(ingest.unique().values())) if e["event"] == "page_view"]

    wait_until(lambda: len(views()) >= 5, 10, "five page views")
    time.sleep(0.3)
    got = views()
    assert [e["properties"]["url"].removeprefix(shop.url) for e in got] == [
        "/spa/?utm_source=ads",
        "/spa/product",
        "/spa/cart",
        "/spa/cart?step=review",
        "/spa/product",
    ]
    referrers = [e["properties"].get("referrer", "").removeprefix(shop.url) for e in got]
    assert referrers[1:] == [
        "/spa/?utm_source=ads",
        "/spa/product",
        "/spa/cart",
        "/spa/cart?step=review",
    ]
    names = [e["event"] for e in by_index(list(ingest.unique().values()))]
    assert names.count("product_view") == 2 and names.count("add_to_cart") == 1


def test_readme_install_works_as_pasted(
    context: BrowserContext, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    # Default options, so automation must look absent; the host is the script's origin.
    context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'webdriver', {get: () => false})"
    )
    open_page(page, f"{shop.url}/readme-install.html")  # loads ingest's /v1/funnelstream.js
    ingest.wait_for_events("page_view", "product_view")
    track(page, "add_to_cart")
    ingest.wait_for_events("add_to_cart", timeout=3)


def test_batches_by_size_and_interval(page: Page, shop: Shop, ingest: FakeIngest) -> None:
    shop.options(batchSize=5, flushInterval=1500)
    open_page(page, f"{shop.url}/index.html")  # page_view: 1 queued
    for i in range(3):
        track(page, "step", {"i": i})
    time.sleep(0.4)
    assert ingest.posts() == [], "a part batch waits for the interval"
    track(page, "step", {"i": 3})  # 5: a full batch goes at once
    wait_until(lambda: ingest.posts(), 1, "the full batch")
    assert len(ingest.posts()[0].events) == 5
    track(page, "late")
    wait_until(lambda: len(ingest.posts()) == 2, 3, "the interval flush")
    assert [e["event"] for e in ingest.posts()[1].events] == ["late"]


# ---- unload ----


def test_events_tracked_right_before_leaving_arrive(
    page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    shop.options(flushInterval=60_000)  # only the unload path can send them
    open_page(page, f"{shop.url}/product.html")
    track(page, "add_to_cart", {"sku": "TEE-1"})
    assert ingest.posts() == []
    page.goto(f"{ingest.url}/elsewhere")  # off to another site: no later page to retry
    events = ingest.wait_for_events("page_view", "product_view", "add_to_cart", timeout=5)
    assert len(events) == 3


def test_hidden_page_sends_at_once_and_settles(page: Page, shop: Shop, ingest: FakeIngest) -> None:
    shop.options(flushInterval=60_000)
    open_page(page, f"{shop.url}/index.html")
    track(page, "add_to_cart")
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    ingest.wait_for_events("page_view", "add_to_cart", timeout=3)
    # The page lived to read the answer: nothing is left to send again.
    wait_until(lambda: stored_queue(page) == [], 3, "an empty queue")
    assert len(ingest.accepted()) == 2


# ---- server down, offline, busy, refusing ----


def test_queue_survives_reload_while_server_down_then_arrives_once(
    page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    ingest.stop()
    open_page(page, f"{shop.url}/product.html")
    track(page, "add_to_cart")
    wait_until(lambda: len(stored_queue(page)) == 3, 5, "three queued events")
    before = {x["e"]["event_id"] for x in stored_queue(page)}

    page.reload()
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    wait_until(lambda: len(stored_queue(page)) == 5, 5, "the reload's two events queued too")
    assert before <= {x["e"]["event_id"] for x in stored_queue(page)}

    ingest.start()
    wait_until(lambda: len(ingest.unique()) == 5, 15, "the queue drained after backoff")
    wait_until(lambda: stored_queue(page) == [], 3, "an empty queue")
    counts = Counter(e["event_id"] for e in ingest.accepted())
    assert set(counts) >= before
    assert set(counts.values()) == {1}, "each event accepted exactly once"


def test_offline_waits_for_online(
    context: BrowserContext, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    open_page(page, f"{shop.url}/index.html")
    ingest.wait_for_events("page_view")
    sent = len(ingest.posts())
    context.set_offline(True)
    track(page, "add_to_cart")
    time.sleep(0.6)
    assert len(ingest.posts()) == sent, "nothing is tried while offline"
    assert [x["e"]["event"] for x in stored_queue(page)] == ["add_to_cart"]
    context.set_offline(False)  # `online` sends at once, whatever the backoff
    ingest.wait_for_events("add_to_cart", timeout=2)


def test_429_retry_after_is_honoured_across_pages(
    page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    ingest.reply(Reply(429, {"Retry-After": "2"}))
    open_page(page, f"{shop.url}/index.html")
    first = wait_until(lambda: ingest.posts(), 5, "the first send")[0]
    assert first.status == 429
    page.reload()  # the next page must wait as well
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    wait_until(lambda: len(ingest.unique()) == 2, 6, "both page views after the wait")
    second = ingest.posts()[1]
    assert second.at - first.at >= 1.9
    assert Counter(e["event_id"] for e in ingest.accepted()).most_common(1)[0][1] == 1
    assert {e["event_id"] for e in first.events} <= set(ingest.unique())


def test_503_retries_with_growing_backoff(page: Page, shop: Shop, ingest: FakeIngest) -> None:
    ingest.reply(Reply(503), Reply(503))
    open_page(page, f"{shop.url}/index.html")
    ingest.wait_for_events("page_view", timeout=8)
    posts = ingest.posts()
    assert [r.status for r in posts] == [503, 503, 202]
    assert [e["event"] for r in posts for e in r.events] == ["page_view"] * 3
    first_gap, second_gap = posts[1].at - posts[0].at, posts[2].at - posts[1].at
    assert first_gap >= 0.45 and second_gap >= 0.95  # 1 s, then 2 s, each with jitter


@pytest.mark.parametrize("status", [400, 401, 413])
def test_refused_batches_are_not_retried(
    status: int, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    ingest.reply(Reply(status))
    open_page(page, f"{shop.url}/index.html")
    refused = wait_until(lambda: ingest.posts(), 5, "the refused send")[0]
    assert refused.status == status
    track(page, "after")
    ingest.wait_for_events("after")
    time.sleep(0.3)
    refused_ids = {e["event_id"] for e in refused.events}
    later = [e["event_id"] for r in ingest.posts()[1:] for e in r.events]
    assert not refused_ids & set(later), "a refused event was sent again"
    assert stored_queue(page) == []


# ---- identity, sessions, storage ----


def test_identify_and_reset(page: Page, shop: Shop, ingest: FakeIngest) -> None:
    open_page(page, f"{shop.url}/index.html")
    page.evaluate("funnelstream.identify('cust-42', {plan: 'gold'})")
    track(page, "purchase")
    page.evaluate("funnelstream.reset()")
    track(page, "page_after_logout")
    ingest.wait_for_events("identify", "purchase", "page_after_logout")
    e = {x["event"]: x for x in ingest.unique().values()}
    assert e["identify"]["user_id"] == "cust-42" and e["identify"]["properties"]["plan"] == "gold"
    assert e["purchase"]["user_id"] == "cust-42"
    assert e["purchase"]["visitor_id"] == e["page_view"]["visitor_id"]
    after = e["page_after_logout"]
    assert "user_id" not in after
    assert after["visitor_id"] != e["purchase"]["visitor_id"]
    assert after["session_id"] != e["purchase"]["session_id"]
    assert after["properties"]["event_index"] == 1


@pytest.mark.parametrize(
    ("shift", "why"),
    [
        ("s.l -= 31 * 60 * 1000", "30 minutes idle"),
        ("s.s -= 24 * 3600 * 1000 + 1000", "24 hours long"),
    ],
)
def test_session_rolls_over(
    shift: str, why: str, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    open_page(page, f"{shop.url}/index.html")
    track(page, "before")
    page.evaluate(
        f"() => {{ const s = JSON.parse(localStorage.getItem('fs_sess')); {shift};"
        " localStorage.setItem('fs_sess', JSON.stringify(s)); }"
    )
    track(page, "after")
    ingest.wait_for_events("before", "after")
    e = {x["event"]: x for x in ingest.unique().values()}
    assert e["before"]["session_id"] == e["page_view"]["session_id"]
    assert e["after"]["session_id"] != e["before"]["session_id"], why
    assert e["after"]["visitor_id"] == e["before"]["visitor_id"]
    assert e["before"]["properties"]["event_index"] == 2
    assert e["after"]["properties"]["event_index"] == 1


@pytest.mark.parametrize(
    ("storage", "in_local", "in_cookie", "kept_on_reload"),
    [
        ("both", True, True, True),
        ("localStorage", True, False, True),
        ("cookie", False, True, True),
        ("memory", False, False, False),
    ],
)
def test_storage_modes(
    storage: str,
    in_local: bool,
    in_cookie: bool,
    kept_on_reload: bool,
    context: BrowserContext,
    page: Page,
    shop: Shop,
    ingest: FakeIngest,
) -> None:
    shop.options(storage=storage)
    open_page(page, f"{shop.url}/index.html")
    first = ingest.wait_for_events("page_view")[0]["visitor_id"]
    local, cookies = fs_storage(page), fs_cookies(context)
    assert (local.get("fs_vid") == first) is in_local
    assert (cookies.get("fs_vid") == first) is in_cookie
    if storage == "memory":
        assert local == {} and cookies == {}
    page.reload()
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    wait_until(lambda: len(ingest.unique()) == 2, 5, "the second page view")
    second = {e["visitor_id"] for e in ingest.unique().values()} - {first}
    assert (not second) is kept_on_reload


def test_queue_is_bounded_in_size_and_age(page: Page, shop: Shop, ingest: FakeIngest) -> None:
    shop.options(queueMaxEvents=5, queueMaxAgeHours=24)
    ingest.stop()
    open_page(page, f"{shop.url}/index.html")
    for i in range(10):
        track(page, "step", {"i": i})
    queue = stored_queue(page)
    assert [x["e"]["properties"].get("i") for x in queue] == [5, 6, 7, 8, 9]
    page.evaluate(
        "() => { const q = JSON.parse(localStorage.getItem('fs_q'));"
        " q[0].e.timestamp -= 25 * 3600 * 1000; localStorage.setItem('fs_q', JSON.stringify(q)); }"
    )
    track(page, "step", {"i": 10})
    assert [x["e"]["properties"].get("i") for x in stored_queue(page)] == [6, 7, 8, 9, 10]


# ---- consent, opt-out, Do Not Track, automation ----


def test_opt_out_sends_and_stores_nothing(
    context: BrowserContext, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    open_page(page, f"{shop.url}/index.html")
    old_visitor = ingest.wait_for_events("page_view")[0]["visitor_id"]
    sent = len(ingest.posts())
    page.evaluate("funnelstream.optOut()")
    track(page, "add_to_cart")
    page.click("#to-product")  # a new page: the choice is remembered
    page.wait_for_url("**/product.html")
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    page.click("#add-to-cart")
    page.wait_for_url("**/cart.html")
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    time.sleep(0.6)
    assert len(ingest.posts()) == sent
    assert fs_storage(page) == {"fs_opt": "out"}
    assert fs_cookies(context) == {}

    page.evaluate("funnelstream.optIn()")  # a new visitor, from this page on
    wait_until(lambda: len(ingest.unique()) == 2, 5, "the page view after opting in")
    view = [e for e in ingest.unique().values() if e["visitor_id"] != old_visitor]
    assert [(e["event"], e["properties"]["path"]) for e in view] == [("page_view", "/cart.html")]


def test_consent_mode_keeps_nothing_until_opt_in(
    context: BrowserContext, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    shop.options(consent=True)
    open_page(page, f"{shop.url}/index.html")
    track(page, "add_to_cart")
    time.sleep(0.6)
    assert ingest.posts() == []
    assert fs_storage(page) == {} and fs_cookies(context) == {}

    page.evaluate("funnelstream.optIn()")  # what happened before consent is sent now
    events = ingest.wait_for_events("page_view", "add_to_cart")
    assert len({e["visitor_id"] for e in events}) == 1
    assert fs_storage(page)["fs_vid"] == events[0]["visitor_id"]
    page.reload()  # consent is remembered
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded")
    wait_until(lambda: len(ingest.unique()) == 3, 5, "the next page's view")


def test_do_not_track_respected_when_asked(
    context: BrowserContext, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})"
    )
    shop.options(respectDNT=True)
    open_page(page, f"{shop.url}/index.html")
    track(page, "add_to_cart")
    time.sleep(0.6)
    assert ingest.posts() == [] and fs_storage(page) == {} and fs_cookies(context) == {}


def test_automation_is_skipped_unless_allowed(
    context: BrowserContext, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    shop.options(allowAutomation=False)
    open_page(page, f"{shop.url}/index.html")
    assert page.evaluate("navigator.webdriver") is True
    track(page, "add_to_cart")
    time.sleep(0.6)
    assert ingest.posts() == [] and fs_storage(page) == {} and fs_cookies(context) == {}


# ---- the host page never sees an error ----

BLOCK_STORAGE = """
for (const name of ['localStorage', 'sessionStorage']) {
  Object.defineProperty(window, name, {
    get() { throw new DOMException('storage is blocked', 'SecurityError'); },
  });
}
Object.defineProperty(Document.prototype, 'cookie', {
  get() { throw new DOMException('cookies are blocked', 'SecurityError'); },
  set(v) { throw new DOMException('cookies are blocked', 'SecurityError'); },
});
"""

ABUSE = """() => {
  const fs = window.funnelstream;
  const circular = {}; circular.self = circular;
  fs.track(); fs.track(null); fs.track('cyclic', circular); fs.track('big', {n: 10n});
  fs.track('string_props', 'abc'); fs.page(42); fs.identify(); fs.identify({}, circular);
  fs.reset(); fs('no_such_method'); fs('toString'); fs(); fs.flush(); fs.init({});
  fs.init({writeKey: 'again', host: 'javascript:alert(1)'});
  history.pushState({}, '', '?after=push'); history.replaceState(null, '');
  document.dispatchEvent(new Event('visibilitychange'));
  window.dispatchEvent(new Event('online'));
  return 'still running';
}"""


def test_never_throws_with_storage_blocked_and_server_gone(
    context: BrowserContext, page: Page, shop: Shop, ingest: FakeIngest
) -> None:
    context.add_init_script(BLOCK_STORAGE)
    ingest.stop()
    open_page(page, f"{shop.url}/index.html")
    assert page.evaluate(ABUSE) == "still running"
    page.evaluate("funnelstream.optOut(); funnelstream.optIn(); funnelstream.track('kept')")
    time.sleep(1.0)  # sends fail and back off meanwhile

    ingest.start()  # storage never worked: the memory queue still delivers
    page.evaluate("window.dispatchEvent(new Event('online'))")
    events = ingest.wait_for_events("kept", "page_view", timeout=5)
    assert len({e["visitor_id"] for e in events}) == 1
    # The page errors fixture fails the test if anything above reached the page.
