"""User-agent parsing and bot detection, on user agents real browsers and bots send."""

from __future__ import annotations

import dataclasses

import pytest

from ingest.useragent import (
    UserAgentInfo,
    bot_reason,
    cached_bot_reason,
    cached_parse_user_agent,
    parse_user_agent,
)

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.91 Safari/537.36"
)
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36"
)
CHROME_ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.6312.118 Safari/537.36"
)
CHROME_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
FIREFOX_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) FxiOS/125.0 Mobile/15E148 Safari/605.1.15"
)
EDGE_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67"
)
OPERA_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36 OPR/109.0.0.0"
)
SAMSUNG = (
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"
)
ANDROID_WEBVIEW = (
    "Mozilla/5.0 (Linux; Android 12; SM-G991B Build/SP1A.210812.016; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.230 Mobile Safari/537.36"
)
FACEBOOK_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/455.0.0.41.107;FBBV/560433443]"
)
INSTAGRAM_ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/118.0.5993.111 Mobile Safari/537.36 "
    "Instagram 307.0.0.34.111 Android"
)
CHROMEBOOK = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
IE11 = "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko"
KINDLE = (
    "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Silk/124.3.1 like Chrome/124.0.6367.118 Safari/537.36"
)
CUBOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36"
)
YANDEX_BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.0.0 YaBrowser/24.4.0.0 Safari/537.36"
)

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.6367.91 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
)
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
FACEBOOK_CRAWLER = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
GPTBOT = (
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
    "+https://openai.com/gptbot)"
)
AHREFS = "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"
SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
WHATSAPP = "WhatsApp/2.23.20.0"
LIGHTHOUSE = (
    "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse"
)
PINGDOM = "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)"
UPTIMEROBOT = "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)"
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/124.0.6367.29 Safari/537.36"
)
PHANTOM = (
    "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) "
    "PhantomJS/2.1.1 Safari/538.1"
)


@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        (CHROME_WIN, UserAgentInfo("Chrome", "124.0", "Windows", "desktop", "10.0")),
        (CHROME_MAC, UserAgentInfo("Chrome", "124.0", "macOS", "desktop", "10.15")),
        (CHROME_ANDROID, UserAgentInfo("Chrome", "124.0", "Android", "mobile", "14")),
        (CHROME_ANDROID_TABLET, UserAgentInfo("Chrome", "123.0", "Android", "tablet", "13")),
        (CHROME_IOS, UserAgentInfo("Chrome", "124.0", "iOS", "mobile", "17.4")),
        (SAFARI_IPHONE, UserAgentInfo("Safari", "17.4", "iOS", "mobile", "17.4")),
        (SAFARI_IPAD, UserAgentInfo("Safari", "16.6", "iOS", "tablet", "16.6")),
        (SAFARI_MAC, UserAgentInfo("Safari", "17.4", "macOS", "desktop", "10.15")),
        (FIREFOX_LINUX, UserAgentInfo("Firefox", "125.0", "Linux", "desktop", "")),
        (FIREFOX_IOS, UserAgentInfo("Firefox", "125.0", "iOS", "mobile", "17.4")),
        (EDGE_WIN, UserAgentInfo("Edge", "124.0", "Windows", "desktop", "10.0")),
        (OPERA_WIN, UserAgentInfo("Opera", "109.0", "Windows", "desktop", "10.0")),
        (SAMSUNG, UserAgentInfo("Samsung Internet", "24.0", "Android", "mobile", "14")),
        (ANDROID_WEBVIEW, UserAgentInfo("Android WebView", "120.0", "Android", "mobile", "12")),
        (FACEBOOK_IOS, UserAgentInfo("Facebook", "455.0", "iOS", "mobile", "17.3")),
        (INSTAGRAM_ANDROID, UserAgentInfo("Instagram", "307.0", "Android", "mobile", "13")),
        (CHROMEBOOK, UserAgentInfo("Chrome", "124.0", "Chrome OS", "desktop", "")),
        (IE11, UserAgentInfo("Internet Explorer", "11.0", "Windows", "desktop", "6.1")),
        (KINDLE, UserAgentInfo("Chrome", "124.0", "Android", "tablet", "9")),
        (CUBOT_PHONE, UserAgentInfo("Chrome", "120.0", "Android", "mobile", "10")),
        (YANDEX_BROWSER, UserAgentInfo("Yandex Browser", "24.4", "Windows", "desktop", "10.0")),
    ],
)
def test_browsers(ua: str, expected: UserAgentInfo) -> None:
    assert parse_user_agent(ua) == expected
    assert bot_reason(ua) is None


@pytest.mark.parametrize(
    ("ua", "reason"),
    [
        (None, "empty_user_agent"),
        ("", "empty_user_agent"),
        ("   ", "empty_user_agent"),
        (HEADLESS_CHROME, "headless_browser"),
        (PHANTOM, "headless_browser"),
        ("Mozilla/5.0 (X11; Linux x86_64) Playwright/1.44", "headless_browser"),
        (GOOGLEBOT, "known_bot"),
        (GOOGLEBOT_SMARTPHONE, "known_bot"),
        (BINGBOT, "known_bot"),
        (FACEBOOK_CRAWLER, "known_bot"),
        (GPTBOT, "known_bot"),
        (AHREFS, "known_bot"),
        (SLACK, "known_bot"),
        (WHATSAPP, "known_bot"),
        (LIGHTHOUSE, "known_bot"),
        (PINGDOM, "known_bot"),
        (UPTIMEROBOT, "known_bot"),
        ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", "known_bot"),
        ("Mozilla/5.0 (compatible; Baiduspider/2.0)", "known_bot"),
        ("curl/8.5.0", "http_client"),
        ("Wget/1.21.3", "http_client"),
        ("python-requests/2.31.0", "http_client"),
        ("python-httpx/0.27.0", "http_client"),
        ("Go-http-client/1.1", "http_client"),
        ("okhttp/4.12.0", "http_client"),
        ("axios/1.6.8", "http_client"),
        ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", "http_client"),
        ("Java/17.0.2", "http_client"),
        ("PostmanRuntime/7.37.3", "http_client"),
    ],
)
def test_bots(ua: str | None, reason: str) -> None:
    assert bot_reason(ua) == reason


@pytest.mark.parametrize(
    "ua", [HEADLESS_CHROME, GOOGLEBOT, GOOGLEBOT_SMARTPHONE, "curl/8.5.0", FACEBOOK_CRAWLER]
)
def test_bots_are_bot_devices(ua: str) -> None:
    assert parse_user_agent(ua).device_type == "bot"


def test_googlebot_smartphone_still_names_its_engine() -> None:
    info = parse_user_agent(GOOGLEBOT_SMARTPHONE)
    assert (info.browser, info.os, info.device_type) == ("Chrome", "Android", "bot")


@pytest.mark.parametrize("ua", ["", "   ", "something/1.0", "x"])
def test_unrecognised_user_agents_are_other_and_unknown(ua: str) -> None:
    info = parse_user_agent(ua)
    assert (info.browser, info.os, info.device_type) == ("Other", "Other", "unknown")


def test_info_is_frozen() -> None:
    info = parse_user_agent(CHROME_WIN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.browser = "x"  # type: ignore[misc]


def test_long_hostile_input_is_fast() -> None:
    # No catastrophic backtracking on long inputs: all patterns are linear.
    ua = "Mozilla/5.0 (" + "a; " * 20_000 + ") Chrome/1.0 Safari/1.0"
    assert parse_user_agent(ua).browser == "Chrome"
    assert bot_reason("bot" * 10_000) == "known_bot"


def test_each_distinct_header_is_parsed_once() -> None:
    """Every request asks both questions of its header: the second time is a lookup."""
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0 (cache test)"
    cached_parse_user_agent.cache_clear()
    cached_bot_reason.cache_clear()
    first = parse_user_agent(ua)
    assert parse_user_agent(ua) is first
    assert bot_reason(ua) is None
    parsed = cached_parse_user_agent.cache_info()
    assert (parsed.hits, parsed.misses) == (1, 1)
    # parse_user_agent asked bot_reason once (a miss); the drop step's ask was a hit.
    asked = cached_bot_reason.cache_info()
    assert (asked.hits, asked.misses) == (1, 1)


def test_a_header_too_long_to_keep_is_answered_uncached() -> None:
    ua = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36 " + "x" * 2000
    cached_parse_user_agent.cache_clear()
    cached_bot_reason.cache_clear()
    assert parse_user_agent(ua).browser == "Chrome"
    assert bot_reason(ua) is None
    assert cached_parse_user_agent.cache_info().currsize == 0
    assert cached_bot_reason.cache_info().currsize == 0
