"""Log lines of a real `funnelstream serve` (both its processes): JSON objects by default,
each line made while handling a request carrying the id its answer returned, a
processor batch's lines carrying the batch id; `--log-format text` prints text."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from funnelstream.log import LogRecord
from funnelstream.log.embedded import EmbeddedLog
from tests.e2e.server import READ, WRITE, Server

pytestmark = [pytest.mark.clickhouse]

EVENT = {"event": "page_view", "visitor_id": "v1", "timestamp": "2026-01-01T00:00:00Z"}


def _json_lines(server: Server) -> list[dict[str, Any]]:
    """Every log line, parsed; the start banner (stdout, for people) is the only text."""
    lines = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith(("Funnelstream (", "  ")):
            continue
        lines.append(json.loads(line))  # fails the test on a line that is not JSON
    return lines


def _wait_for(server: Server, found: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while found not in server.log_path.read_text():
        assert time.monotonic() < deadline, f"no log line with {found!r}"
        time.sleep(0.1)


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
