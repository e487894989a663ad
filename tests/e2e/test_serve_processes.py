"""`funnelstream serve` as two processes (funnelstream/ingest_process.py): the owner of the
embedded engine and an ingest process on the public port, which imports no engine, gets
revocations within the refresh period, and is restarted, visibly, when it dies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from funnelstream.demo import storefront
from tests.e2e.server import ADMIN, READ, Server

pytestmark = pytest.mark.clickhouse

REFRESH_SECONDS = 0.5
# One refresh period, plus a reload and a request on a busy 2-core machine.
BOUND_SECONDS = REFRESH_SECONDS + 1.5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data", FUNNELSTREAM_KEY_REFRESH_SECONDS=str(REFRESH_SECONDS)).start()
    yield s
    s.stop()


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def ingest_pid(server: Server, timeout: float = 30) -> int:
    """The one live child of serve's process."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [p for p in children(server.proc.pid) if not gone(p)]
        if len(live) == 1:
            return live[0]
        assert len(live) < 2, live
        time.sleep(0.05)
    raise AssertionError("no ingest process")


def maps_engine(pid: int) -> bool:
    return "chdb" in Path(f"/proc/{pid}/maps").read_text()


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_two_processes_only_the_owner_holds_the_engine_and_events_are_reported(
    server: Server,
) -> None:
    assert server.proc is not None
    ingest = ingest_pid(server)
    assert "serve-ingest" in cmdline(ingest)
    assert maps_engine(server.proc.pid)
    assert not maps_engine(ingest)

    events = storefront(visitors=200, start_ms=int(time.time() * 1000) - 3_600_000).events
    for i in range(0, len(events), 500):
        r = server.post({"batch": events[i : i + 500]})
        assert r.status_code == 202, r.text
    server.wait_processed()
    report = server.report(**{"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
    assert report["steps"][0]["visitors"] == 200

    metrics = httpx.get(f"{server.base}/metrics", timeout=30).text
    rss = [line for line in metrics.splitlines() if line.startswith("process_resident_memory")]
    assert any('process="ingest"' in line for line in rss), rss
    assert any("process=" not in line for line in rss), rss  # the owner's, unlabelled
    ready = httpx.get(f"{server.base}/readyz", timeout=30).json()
    assert ready["status"] == "ready"
    assert {"ingest_process", "ingest.keys", "ingest.log", "processor"} <= set(ready["components"])
    # The public port documents ingest and the query API in one document.
    paths = httpx.get(f"{server.base}/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/events", "/v1/funnelstream.js", "/v1/funnels/{funnel_id}/report"} <= set(paths)


def test_a_key_revoked_through_the_api_is_refused_by_ingest_within_the_period(
    server: Server,
) -> None:
    made = httpx.post(
        f"{server.base}/v1/keys", json={"scope": "write", "label": "site"}, headers=ADMIN
    )
    assert made.status_code == 201, made.text
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    event = {"event": "page_view", "visitor_id": "v1"}

    def status_within(status: int, limit: float) -> float:
        start = time.monotonic()
        while True:
            r = httpx.post(f"{server.base}/v1/events", json=event, headers=key, timeout=10)
            if r.status_code == status:
                return time.monotonic() - start
            assert time.monotonic() - start < limit, (r.status_code, r.text)
            time.sleep(0.02)

    assert status_within(202, BOUND_SECONDS) < BOUND_SECONDS  # a new key reaches it too
    revoked = httpx.delete(f"{server.base}/v1/keys/{made.json()['key_id']}", headers=ADMIN)
    assert revoked.status_code == 200, revoked.text
    assert status_within(401, BOUND_SECONDS) < BOUND_SECONDS
    # The snapshot that carried it holds digests only, for this user alone.
    snapshot = server.data_dir / "key_snapshot.json"
    assert snapshot.stat().st_mode & 0o777 == 0o600
    assert made.json()["key"] not in snapshot.read_text()


def test_a_killed_ingest_process_shows_in_readyz_and_is_started_again(server: Server) -> None:
    first = ingest_pid(server)
    os.kill(first, signal.SIGKILL)
    # The public port belongs to the owner's socket: requests wait for the new process.
    ready = httpx.get(f"{server.base}/readyz", timeout=30)
    assert ready.status_code == 503
    assert "exited with -9" in ready.json()["failed"]["ingest_process"]
    second = ingest_pid(server)
    assert second != first
    r = server.post({"event": "page_view", "visitor_id": "after"})
    assert r.status_code == 202, r.text
    server.wait_processed()
    assert httpx.get(f"{server.base}/v1/stats", headers=READ, timeout=30).json()


def test_sigterm_stops_ingest_before_the_processor(server: Server) -> None:
    assert server.proc is not None
    ingest = ingest_pid(server)
    assert server.post({"event": "page_view", "visitor_id": "v"}).status_code == 202
    server.proc.send_signal(signal.SIGTERM)
    # uvicorn ends by raising the signal it stopped on again.
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert gone(ingest)
    log = server.log_path.read_text()
    assert log.index(f"ingest process (pid {ingest}) stopped") < log.index("revoked partitions")


def test_the_ingest_process_stops_when_its_owner_is_killed(server: Server) -> None:
    ingest = ingest_pid(server)
    server.kill9()
    deadline = time.monotonic() + 10
    while not gone(ingest):
        assert time.monotonic() < deadline, "the ingest process outlived its owner"
        time.sleep(0.05)


def test_a_live_stream_is_forwarded_as_it_comes(server: Server) -> None:
    # The stream is open before the event is sent: a transition arriving proves the
    # forwarding streams (a buffered answer would arrive only when the stream ends).
    url = f"{server.base}/v1/funnels/checkout/live/stream"
    with httpx.stream("GET", url, headers=READ, timeout=30) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        r = server.post({"event": "page_view", "visitor_id": "streamed"})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        for line in stream.iter_lines():
            if line.startswith("data:") and "streamed" in line:
                break
            assert time.monotonic() < deadline, "no transition streamed"
