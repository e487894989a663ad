"""Log lines of every `funnelstream` process: one setup, JSON lines or text, with context.

Every entry point calls `configure` once (funnelstream/cli.py). Services write one JSON
object per line (timestamp, level, logger, message, and the context fields below), which
a log collector indexes without parsing; `FUNNELSTREAM_LOG_FORMAT=text` or `--log-format
text` prints the same lines for people. Command-line tools (import, keys, migrate, erase)
default to text.

Context travels in contextvars, so every line made while handling one request or one
processor batch carries its id without being passed along by hand:

* `request_id`: set per HTTP request by `RequestIds` (an incoming `X-Request-ID` is kept
  when it is sane, else one is made) and returned in the response's `X-Request-ID`.
  With `FUNNELSTREAM_ACCESS_LOG=true` it also logs one line per request (method, path,
  status, duration); off by default, since ingest answers thousands a second.
* `batch_id`: set by the processor around the apply and the write of one batch
  (processor/pipeline.py), so its retries, dead letters and refolds name the batch.

The JSON encoding is python-json-logger's orjson formatter: it formats stdlib `logging`
records, which every module here already makes, so no call site changes, and it encodes
with orjson, which ingest already uses.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["json", "text"]

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
BATCH_ID: ContextVar[str | None] = ContextVar("batch_id", default=None)
_CONTEXT = (("request_id", REQUEST_ID), ("batch_id", BATCH_ID))

HEADER = b"x-request-id"
# Set in the scope by the outermost `RequestIds`: an inner one (the ingest app inside the
# public front of `serve`) leaves the request to it.
_SCOPE_KEY = "funnelstream.request_id"
# An incoming id is kept only if it is short and plain: it is echoed in a header and
# written into every log line, so nothing that could forge a line or a header passes.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# Noisy at INFO: one line per HTTP call the CLI or a test client makes.
_QUIET_LOGGERS = ("httpx", "httpcore")


class _ContextFields(logging.Filter):
    """Copies the ids set in the current context onto each record (absent ones left out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            value = var.get()
            if value is not None:
                setattr(record, name, value)
        return True


class _TextFormatter(logging.Formatter):
    """`time level logger message [request_id=… batch_id=…]` and the traceback, if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{name}={getattr(record, name)}" for name, _ in _CONTEXT if hasattr(record, name)
        )
        if not ids:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [{ids}]{newline}{rest}"


def json_formatter() -> logging.Formatter:
    return OrjsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
        # uvicorn's copy of the message with terminal colours in it.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line is written (a test's capture that
    has since ended is never held)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Route every logger (ours, uvicorn's, the libraries') to one stderr handler in `fmt`.
    Called again, it replaces its own handler; handlers others put on the root logger
    (a test runner's) are left in place."""
    handler = _Stderr()
    handler.setFormatter(json_formatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_ContextFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Stderr):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def batch_context(batch_id: str) -> Iterator[None]:
    """Log lines made inside name this processor batch."""
    token = BATCH_ID.set(batch_id)
    try:
        yield
    finally:
        BATCH_ID.reset(token)


def new_id() -> str:
    # 128 random bits, as a uuid4 has, for a third of its cost.
    return os.urandom(16).hex()


class RequestIds:
    """ASGI middleware: one id per HTTP request, in the log context and the answer.

    The id chosen is also written into the request's headers, so an app inside (or the
    owner a request is forwarded to, funnelstream/front.py) keeps the same id rather than
    making its own, and an answer that already carries it is not given a second one.
    """

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self._app = app
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _SCOPE_KEY in scope:
            await self._app(scope, receive, send)
            return
        # On ingest's hot path: a few microseconds per request. ASGI header names are
        # lower case; the scope is this request's own, so it is changed in place.
        incoming = None
        for key, value in scope["headers"]:
            if key == HEADER:
                incoming = value
        if incoming is not None and _SANE_ID.fullmatch(incoming):
            raw = incoming
            request_id = incoming.decode("ascii")
        else:
            request_id = new_id()
            raw = request_id.encode("ascii")
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != HEADER]
            scope["headers"].append((HEADER, raw))
        scope[_SCOPE_KEY] = request_id
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                if not any(k.lower() == HEADER for k, _ in headers):
                    message = {**message, "headers": [*headers, (HEADER, raw)]}
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            if self._access_log:
                _access(scope, status, time.perf_counter() - started)
            REQUEST_ID.reset(token)


_access_logger = logging.getLogger("funnelstream.access")


def _access(scope: Scope, status: int, seconds: float) -> None:
    # status 0: the app raised or the client left before an answer started.
    _access_logger.info(
        "%s %s %d %.1fms",
        scope["method"],
        scope["path"],
        status,
        seconds * 1000,
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        },
    )
