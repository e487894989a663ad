"""The harness of the browser tests: two local servers and a few helpers.

Two local servers on different ports, so every send is cross-origin as on a real shop:

- `shop` serves `fixtures/` (home → product → cart → checkout → thank you, and an SPA),
  plus `/config.js`, which hands the page the snippet URL and its `init` options.
- `ingest` is a stand-in for ingest's `POST /v1/events` that records every request and
  answers from a plan the test sets (202 by default; 429 with Retry-After, 400, ...), and
  can be stopped and started again on the same port to play "server gone". It tests the
  client's retry logic; the real server is driven by test_storefront_e2e.py.

Chromium is Debian's (/usr/bin/chromium, installed by deploy/browser/install.sh); nothing
is downloaded. Every page fails its test if the snippet throws into it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SNIPPET = ROOT / "ingest" / "static" / "funnelstream.js"
README_INGEST = "https://ingest.example.com"  # the host the README's install names

# Headless Chromium says "HeadlessChrome", which ingest rightly drops as a bot; the
# storefront visitor we play is a desktop Chrome. Set for the whole browser too: beacons
# leave from the browser process, which a per-page override does not reach.
DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_ARGS = [*CHROMIUM_FLAGS, f"--user-agent={DESKTOP_UA}"]
# Collects what a page's own error handlers would see from us.
WATCH_ERRORS = """
window.__pageErrors = [];
window.addEventListener('error', e => window.__pageErrors.push(String(e.message)));
window.addEventListener('unhandledrejection',
  e => window.__pageErrors.push('rejection: ' + e.reason));
"""

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll until `check()` is truthy; its value, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ---- the stand-in ingest ----


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        doc = self.json
        return list(doc["batch"]) if "batch" in doc else [doc]


@dataclass
class Reply:
    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)


class FakeIngest:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Received] = []
        self.plan: deque[Reply] = deque()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # control

    def start(self) -> None:
        assert self._server is None
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _ingest_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        """Gone: connections are refused until `start()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reply(self, *replies: Reply) -> None:
        """Answer the next POSTs with these, in order; 202 after that."""
        with self.lock:
            self.plan.extend(replies)

    # what arrived

    def posts(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST"]

    def accepted(self) -> list[dict[str, Any]]:
        """Every event of every POST answered 2xx, duplicates included."""
        return [e for r in self.posts() if 200 <= r.status < 300 for e in r.events]

    def unique(self) -> dict[str, dict[str, Any]]:
        """Accepted events by event_id: what a deduping server keeps."""
        return {e["event_id"]: e for e in self.accepted()}

    def names(self) -> list[str]:
        """Names of the unique accepted events, in client order (timestamp, then index)."""
        events = sorted(
            self.unique().values(),
            key=lambda e: (e["timestamp"], e["properties"].get("event_index", 0)),
        )
        return [e["event"] for e in events]

    def wait_for_events(self, *names: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        def arrived() -> list[dict[str, Any]] | None:
            got = [e for e in self.unique().values() if e["event"] in names]
            wanted = all(any(e["event"] == n for e in got) for n in names)
            return got if wanted else None

        return wait_until(arrived, timeout, f"events {names}; have {self.names()}")


def _ingest_handler(ingest: FakeIngest) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _cors(self) -> None:
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Expose-Headers", "Retry-After")

        def _record(self, status: int, body: bytes = b"") -> None:
            with ingest.lock:
                ingest.requests.append(
                    Received(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        status,
                        time.monotonic(),
                    )
                )

        def do_OPTIONS(self) -> None:  # a preflight: the snippet must never cause one
            self._record(204)
            self.send_response(204)
            self._cors()
            self.send_header("Access-Control-Allow-Methods", "POST")
            self.send_header("Access-Control-Allow-Headers", "Content-Type, Authorization")
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with ingest.lock:
                reply = ingest.plan.popleft() if ingest.plan else Reply()
            self._record(reply.status, body)
            try:
                count = len(Received("", "", {}, body, 0, 0).events)
            except (ValueError, KeyError, TypeError):
                count = 0
            payload = json.dumps(
                {"accepted": count} if reply.status < 300 else {"error": "planned"}
            ).encode()
            self.send_response(reply.status)
            self._cors()
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path.startswith("/v1/funnelstream.js"):
                body, ctype = SNIPPET.read_bytes(), "application/javascript"
            else:  # somewhere else entirely, without the snippet
                body, ctype = b"<!doctype html><title>Elsewhere</title><p>Elsewhere", "text/html"
            self.send_response(200)
            self._cors()
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


# ---- the fixture storefront ----


class Shop:
    def __init__(self, init: dict[str, Any], snippet_src: str = "") -> None:
        """`snippet_src` defaults to the shop's self-hosted copy of the built snippet."""
        self.port = free_port()
        # "localhost", not 127.0.0.1 as ingest: another site, so the shop's cookies are
        # not the ingest's, as on a real shop.
        self.url = f"http://localhost:{self.port}"
        self.config: dict[str, Any] = {
            "src": snippet_src or f"{self.url}/funnelstream.js",
            "init": init,
        }
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _shop_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def options(self, **options: Any) -> None:
        """Change the snippet's `init` options for the pages loaded from now on."""
        self.config["init"].update(options)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _shop_handler(shop: Shop) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(FIXTURES), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def end_headers(self) -> None:
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/config.js":
                body = f"window.FS_TEST = {json.dumps(shop.config)};".encode()
                self._send(body, "application/javascript")
                return
            if path == "/funnelstream.js":  # self-hosted copy, for when ingest is gone
                self._send(SNIPPET.read_bytes(), "application/javascript")
                return
            if path == "/readme-install.html":  # the README's install, pointed at `ingest`
                html = (FIXTURES / "readme-install.html").read_text()
                ingest = shop.config["init"]["host"]
                self._send(html.replace(README_INGEST, ingest).encode(), "text/html")
                return
            if path.startswith("/spa/"):
                self.path = "/spa.html"
            super().do_GET()

        def _send(self, body: bytes, ctype: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def open_page(page: Page, url: str) -> None:
    """Load a shop page and wait until the snippet has replaced the loader stub."""
    page.goto(url)
    page.wait_for_function("window.funnelstream && window.funnelstream.loaded === true")


def stored_queue(page: Page) -> list[dict[str, Any]]:
    """The snippet's durable queue as localStorage holds it."""
    raw = page.evaluate("localStorage.getItem('fs_q')")
    return list(json.loads(raw)) if raw else []
