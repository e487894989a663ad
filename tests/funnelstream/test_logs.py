"""Log lines of a real `funnelstream serve` (both its processes): JSON objects by default,
each line made while handling a request carrying the id its answer returned, a
processor batch's lines carrying the batch id; `--log-format text` prints text."""

from __future__ import annotations

import asyncio
import json
import re
import string
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from funnelstream.log import LogRecord
from funnelstream.log.embedded import EmbeddedLog
from funnelstream.logs import REQUEST_ID, RequestIds
from tests.e2e.server import READ, WRITE, Server

EVENT = {"event": "page_view", "visitor_id": "v1", "timestamp": "2026-01-01T00:00:00Z"}


def _json_lines(server: Server) -> list[dict[str, Any]]:
    """Every log line, parsed; the start banner (stdout, for people) is the only text."""
    lines = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith(("Funnelstream (", "  ")):
            continue
        lines.append(json.loads(line))  # fails the test on a line that is not JSON
    return lines


def _wait_for(server: Server, found: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while found not in server.log_path.read_text():
        assert time.monotonic() < deadline, f"no log line with {found!r}"
        time.sleep(0.1)


@pytest.mark.clickhouse
def test_json_lines_carry_request_and_batch_ids(tmp_path: Path) -> None:
    server = Server(tmp_path, FUNNELSTREAM_ACCESS_LOG="true").start()
    try:
        given = _post(server, "client-chosen.1")
        assert given.status_code == 202
        assert given.headers["x-request-id"] == "client-chosen.1"
        # Not sane (a space, and too long): replaced by one of ours, returned.
        made = _post(server, "a b" * 100)
        assert made.headers["x-request-id"] != "a b" * 100
        # A query API request: answered by the owner, through the ingest process.
        report = httpx.get(f"{server.base}/v1/funnels", headers=READ, timeout=30)
        assert report.status_code == 200
        assert len(report.headers.get_list("x-request-id")) == 1
        # A record no processor can decode: its dead letter is logged in its batch.
        asyncio.run(_append_undecodable(tmp_path / "log"))
        _wait_for(server, "dead letters")
        _wait_for(server, report.headers["x-request-id"])
    finally:
        server.stop()

    lines = _json_lines(server)
    assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in lines)

    def with_id(request_id: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("request_id") == request_id]

    (ingest_line,) = with_id("client-chosen.1")  # the ingest process's access line
    assert ingest_line["logger"] == "funnelstream.access"
    assert (ingest_line["method"], ingest_line["path"], ingest_line["status"]) == (
        "POST",
        "/v1/events",
        202,
    )
    assert len(with_id(made.headers["x-request-id"])) == 1
    # Forwarded: the ingest process and the owner each log it, under the one id.
    forwarded = with_id(report.headers["x-request-id"])
    assert [line["path"] for line in forwarded] == ["/v1/funnels", "/v1/funnels"]
    (dead,) = [line for line in lines if "dead letters" in line["message"]]
    assert dead["level"] == "WARNING"
    assert dead["logger"] == "processor.pipeline"
    assert len(dead["batch_id"]) == 8
    assert "request_id" not in dead


def test_text_format_on_request(tmp_path: Path) -> None:
    # Ingest alone (no engine to open: a quick start) does as `serve` does.
    server = Server(
        tmp_path, command="ingest", args=["--log-format", "text"], FUNNELSTREAM_ACCESS_LOG="1"
    ).start()
    try:
        r = _post(server, "text-1")
        assert r.headers["x-request-id"] == "text-1"
        _wait_for(server, "request_id=text-1")
    finally:
        server.stop()
    text = server.log_path.read_text()
    (line,) = [line for line in text.splitlines() if "request_id=text-1" in line]
    assert " INFO funnelstream.access POST /v1/events 202 " in line
    assert not any(line.startswith("{") for line in text.splitlines())


def _post(server: Server, request_id: str) -> httpx.Response:
    headers = {**WRITE, "X-Request-ID": request_id}
    return httpx.post(f"{server.base}/v1/events", json=EVENT, headers=headers, timeout=30)


async def _append_undecodable(path: Path) -> None:
    log = EmbeddedLog(path)
    producer = log.producer("events")
    await producer.start()
    await producer.append([LogRecord(b"shop\x00v9", b"not an event", int(time.time() * 1000))])
    await producer.stop()
    await log.close()


SANE = st.text(alphabet=string.ascii_letters + string.digits + "._:/+=-", min_size=1, max_size=128)


@given(incoming=st.one_of(st.none(), SANE.map(str.encode), st.binary(max_size=200)))
def test_request_id_kept_when_sane_else_made(incoming: bytes | None) -> None:
    """One id per request, in the app's view (header and log context) and once in the
    answer: the incoming one when it is 1-128 plain characters, else a fresh one."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["headers"] = [v for k, v in scope["headers"] if k == b"x-request-id"]
        seen["context"] = REQUEST_ID.get()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    headers = [] if incoming is None else [(b"x-request-id", incoming)]
    scope = {"type": "http", "method": "POST", "path": "/v1/events", "headers": headers}
    # Nested as in serve's ingest process (its front, then the ingest app): one id.
    asyncio.run(RequestIds(RequestIds(app))(scope, receive, send))

    answered = [v for k, v in sent[0]["headers"] if k == b"x-request-id"]
    assert len(answered) == 1 and seen["headers"] == answered
    assert seen["context"] == answered[0].decode()
    if incoming is not None and re.fullmatch(rb"[A-Za-z0-9._:/+=-]{1,128}", incoming):
        assert answered[0] == incoming
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", answered[0])
    assert REQUEST_ID.get() is None  # not left behind for the next request
