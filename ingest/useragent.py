"""User-agent enrichment and bot detection: pure functions, no I/O, no UA library.

`bot_reason` answers "should ingest drop this request, and why" with a stable, typed
reason (the drop step counts it by that name). `parse_user_agent` answers "what browser,
OS and kind of device" for the enrichment step. Both read a short list of hand-written
rules, checked in order; the first that matches wins. The lists aim at the traffic a
storefront really sees (the big browsers, in-app webviews, crawlers, link previews,
monitoring, HTTP libraries), not at every user agent ever seen.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final, Literal

DeviceType = Literal["desktop", "mobile", "tablet", "bot", "unknown"]
BotReason = Literal["empty_user_agent", "headless_browser", "known_bot", "http_client"]

OTHER: Final = "Other"


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    browser: str
    browser_version: str
    os: str
    device_type: DeviceType
    os_version: str = ""


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# Automation drivers and headless builds: real browsers driven by scripts.
_HEADLESS: Final = _rx(r"headless|phantomjs|slimerjs|puppeteer|playwright|selenium|webdriver")

# Crawlers, link previews, monitors, AI fetchers. "bot" anywhere except the phone brand
# Cubot; the rest are the common ones that do not say "bot".
_KNOWN_BOT: Final = _rx(
    r"(?<!cu)bot(?:\b|_)|spider|crawl|slurp|archiver|facebookexternalhit|"
    r"meta-externalagent|mediapartners-google|adsbot|apis-google|feedfetcher|"
    r"google-inspectiontool|google-read-aloud|googleother|lighthouse|pagespeed|gtmetrix|"
    r"pingdom|uptime|statuscake|site24x7|newrelicpinger|datadog|\bptst\b|prerender|"
    r"rendertron|chatgpt-user|anthropic-ai|claude-web|perplexity|bytespider|yandex(?!browser)|"
    r"baiduspider|seznam|\byeti\b|whatsapp|bingpreview|embedly|quora link preview|"
    r"outbrain|pinterest/|vkshare|skypeuripreview|validator|scanner|probe|\bcheck(?:er|ly)\b"
)

# Programmatic HTTP clients: named at the start of the string, the way libraries do.
_HTTP_CLIENT: Final = _rx(
    r"^(?:curl|wget|python|aiohttp|httpx|requests|go-http-client|java/|okhttp|"
    r"apache-httpclient|libwww-perl|lwp|php|guzzle|ruby|faraday|axios|node-fetch|node|undici|"
    r"got|postmanruntime|insomnia|httpie|dart|reqwest|rust|powershell|winhttp|scrapy|"
    r"restsharp|k6|jmeter|artillery|hey/|ab/|wrk)\b"
)


# A storefront's traffic comes from a few thousand distinct user agents at most, and every
# request asks both questions of its header: each is answered once per distinct header.
# Bounded in entries and in their size (real user agents are a few hundred characters;
# longer ones are answered uncached), so random headers cannot grow memory.
_CACHED = 4096
_CACHED_CHARS = 1024


def bot_reason(ua: str | None) -> BotReason | None:
    """Why a request with this user agent is not a person, or None when it may be one."""
    if ua is not None and len(ua) > _CACHED_CHARS:
        return _bot_reason(ua)
    return cached_bot_reason(ua)


def parse_user_agent(ua: str) -> UserAgentInfo:
    """Browser, browser version (major.minor), OS and device type of a user agent."""
    if len(ua) > _CACHED_CHARS:
        return _parse_user_agent(ua)
    return cached_parse_user_agent(ua)


def _bot_reason(ua: str | None) -> BotReason | None:
    if ua is None or not ua.strip():
        return "empty_user_agent"
    if _HEADLESS.search(ua):
        return "headless_browser"
    if _KNOWN_BOT.search(ua):
        return "known_bot"
    if _HTTP_CLIENT.search(ua):
        return "http_client"
    return None


# (browser name, pattern whose first non-empty group is the version). Order matters: Edge, Opera,
# Samsung and the in-app browsers all also say "Chrome" and "Safari".
_BROWSERS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("Edge", _rx(r"\b(?:Edg|EdgA|EdgiOS|Edge)/([\d.]+)")),
    ("Opera", _rx(r"\b(?:OPR|OPiOS|OPT)/([\d.]+)|\bOpera[/ ]([\d.]+)")),
    ("Samsung Internet", _rx(r"\bSamsungBrowser/([\d.]+)")),
    ("Yandex Browser", _rx(r"\bYaBrowser/([\d.]+)")),
    ("UC Browser", _rx(r"\bUCBrowser/([\d.]+)")),
    ("Facebook", _rx(r"\bFBAV/([\d.]+)")),
    ("Facebook", _rx(r"\bFB(?:AN|_IAB)/")),
    ("Instagram", _rx(r"\bInstagram ([\d.]+)")),
    ("Firefox", _rx(r"\b(?:Firefox|FxiOS)/([\d.]+)")),
    ("Android WebView", _rx(r"; wv\).*?\bChrome/([\d.]+)")),
    ("Chrome", _rx(r"\b(?:CriOS|Chrome)/([\d.]+)")),
    ("Chromium", _rx(r"\bChromium/([\d.]+)")),
    ("Safari", _rx(r"\bVersion/([\d.]+).*\bSafari/")),
    ("Safari", _rx(r"\b(?:iPhone|iPad|iPod)\b.*\bAppleWebKit/")),  # in-app webviews
    ("Internet Explorer", _rx(r"\bMSIE ([\d.]+)|\bTrident/.*\brv:([\d.]+)")),
)

# (OS name, pattern whose optional group 1 is the version, "_" or "." separated).
_OSES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("iOS", _rx(r"\b(?:iPhone|iPad|iPod)\b(?:.*?\bOS ([\d_]+))?")),
    ("Android", _rx(r"\bAndroid(?: ([\d.]+))?")),
    ("Chrome OS", _rx(r"\bCrOS\b")),
    ("Windows", _rx(r"\bWindows(?: NT ([\d.]+))?")),
    ("macOS", _rx(r"(?:\bMacintosh\b.*?)?\bMac OS X(?: ([\d_.]+))?|\bMacintosh\b")),
    ("Linux", _rx(r"\bLinux\b|\bX11\b")),
)

_TABLET: Final = _rx(
    r"\biPad\b|\btablet\b|\bKindle\b|\bSilk/|\bPlayBook\b|^(?!.*\bMobi).*\bAndroid"
)
_MOBILE: Final = _rx(r"\bMobi|\biPhone\b|\biPod\b|\bWindows Phone\b|\bBlackBerry\b|Opera Mini")


def _short_version(raw: str | None) -> str:
    """`120.0.6099.109` → `120.0`, `17_2_1` → `17.2`: enough to group by."""
    if not raw:
        return ""
    return ".".join(raw.replace("_", ".").strip(".").split(".")[:2])


def _first(rules: tuple[tuple[str, re.Pattern[str]], ...], ua: str) -> tuple[str, str]:
    for name, pattern in rules:
        match = pattern.search(ua)
        if match:
            version = next((group for group in match.groups() if group), "")
            return name, _short_version(version)
    return OTHER, ""


def _device_type(ua: str, os: str) -> DeviceType:
    if _TABLET.search(ua):
        return "tablet"
    if _MOBILE.search(ua):
        return "mobile"
    if os in {"Windows", "macOS", "Linux", "Chrome OS"}:
        return "desktop"
    return "unknown"


def _parse_user_agent(ua: str) -> UserAgentInfo:
    if not ua or not ua.strip():
        return UserAgentInfo(OTHER, "", OTHER, "unknown")
    browser, browser_version = _first(_BROWSERS, ua)
    os, os_version = _first(_OSES, ua)
    if bot_reason(ua) is not None:
        return UserAgentInfo(browser, browser_version, os, "bot", os_version)
    return UserAgentInfo(browser, browser_version, os, _device_type(ua, os), os_version)


cached_bot_reason = functools.lru_cache(maxsize=_CACHED)(_bot_reason)
cached_parse_user_agent = functools.lru_cache(maxsize=_CACHED)(_parse_user_agent)
