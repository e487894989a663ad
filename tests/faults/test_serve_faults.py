"""Faults under a real `funnelstream serve` (embedded log, embedded engine, its own
processes): ClickHouse down while events keep coming, the data directory's disk full,
and the server killed with requests in flight. Faults at the engine and the log write are
injected through the test-only fault plan file (funnelstream/faults.py); the kill is a
real SIGKILL. Each scenario ends exact, read through the product's own API.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.server import CONFIG, Server, stats
from tests.faults.harness import (
    EVERYTHING,
    Expected,
    FaultFile,
    batches,
    seed,
    shop_traffic,
    size,
)

pytestmark = pytest.mark.clickhouse

# The server's checkout funnel, and the same counting attempts (a second copy of an event
# would show there first).
SERVER_CONFIG = (
    CONFIG
    + """
[[funnels]]
id = "attempts"
project = "shop"
window_seconds = 86400
counting = "total"
steps = [
  { event = "page_view" },
  { event = "product_view" },
  { event = "add_to_cart" },
  { event = "checkout_started" },
  { event = "purchase" },
]
"""
)


def answers(server: Server) -> dict[str, Any]:
    totals = stats(server)
    return {
        "events": totals["events"],
        "visitors": totals["visitors"],
        "sessions": totals["sessions"],
        "transitions": totals["funnel_transitions"],
        "dead letters": totals["dead_letters"],
        "report reached": [s["visitors"] for s in server.report(**EVERYTHING)["steps"]],
        "report attempts": [
            s["visitors"] for s in server.report("attempts", **EVERYTHING)["steps"]
        ],
        "live reached": [s["reached"] for s in server.live()["stages"]],
    }


def assert_served_exactly(server: Server, want: Expected) -> None:
    """Events, sessions, live stages and reports equal the oracle's."""
    server.wait_processed(timeout=120)
    expected = {
        "events": want.events,
        "visitors": want.visitors,
        "sessions": want.sessions,
        # Per funnel a transition per (visitor, step) reached; both funnels have the
        # same steps.
        "transitions": 2 * sum(want.reached),
        "dead letters": 0,
        "report reached": want.reached,
        "report attempts": want.attempts,
        "live reached": want.reached,
    }
    got = answers(server)
    wrong = {k: f"served {got[k]}, expected {v}" for k, v in expected.items() if got[k] != v}
    assert not wrong, wrong


def wait_until(condition: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.1)


def readyz(server: Server) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{server.base}/readyz", timeout=10)
    return r.status_code, r.json()


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.base}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def import_file(server: Server, path: Path, events: list[dict[str, Any]]) -> subprocess.Popen[str]:
    """`funnelstream import`, the retrying client (429/503/connection errors)."""
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    return subprocess.Popen(
        [sys.executable, "-m", "funnelstream.cli", "import", str(path), "--host", server.base]
        + ["--write-key", "wk_test", "--batch-size", "100", "--give-up-after", "120", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Served:
    """One `serve` shared by the scenarios that do not kill it, with everything it has
    acknowledged so far: each scenario adds its own and compares the whole."""

    def __init__(self, server: Server, faults: FaultFile) -> None:
        self.server = server
        self.faults = faults
        self.acknowledged: list[dict[str, Any]] = []

    def restart(self) -> None:
        """A new server on the same data directory and fault plan (after a kill)."""
        old = self.server
        self.server = Server(old.data_dir, SERVER_CONFIG, **old.env).start()

    def send(self, events: list[dict[str, Any]]) -> None:
        for part in batches(events, 100):
            assert self.server.post({"batch": part}).status_code == 202
            self.acknowledged.extend(part)


# Retries back off to at most half a second, so recovery is seen quickly.
FAST_RETRIES = {
    "FUNNELSTREAM_RETRY_INITIAL_SECONDS": "0.05",
    "FUNNELSTREAM_RETRY_MAX_SECONDS": "0.5",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("served")
    faults = FaultFile(directory / "faults.json")
    server = Server(directory / "data", SERVER_CONFIG, **faults.env(), **FAST_RETRIES).start()
    shared = Served(server, faults)
    try:
        yield shared
    finally:
        shared.server.stop()


def test_clickhouse_down_while_events_keep_coming(served: Served) -> None:
    """Every ClickHouse call refused for a while: ingest keeps acknowledging (the log
    holds the events), /readyz and the metrics show ClickHouse failing, the processor
    retries with the shared backoff; once it is back, nothing is lost or doubled."""
    server, faults = served.server, served.faults
    raw = shop_traffic(visitors=size(200, 5000), seed=seed(30))
    half = len(raw) // 2
    served.send(raw[:half])
    faults.set({"clickhouse": {"fault": "refuse"}})
    try:
        served.send(raw[half:])  # the log takes them
        wait_until(lambda: "clickhouse" in readyz(server)[1].get("failed", {}), "/readyz")
        status, body = readyz(server)
        assert status == 503 and "Code: 210" in body["failed"]["clickhouse"]
        assert metric(server, 'funnelstream_component_up{component="clickhouse"}') == 0
    finally:
        faults.set({})
    wait_until(lambda: readyz(server)[0] == 200, "ready again", 60)
    assert_served_exactly(server, Expected.of(served.acknowledged))


def test_disk_full_refuses_with_503_and_resumes(served: Served, tmp_path: Path) -> None:
    """The embedded log's write fails as on ENOSPC: ingest answers 503 naming why,
    acknowledges nothing it did not store, /readyz shows the log failing; a retrying
    client (the import command) gets every event in once space returns."""
    server, faults = served.server, served.faults
    raw = shop_traffic(visitors=size(200, 5000), seed=seed(31))
    third = len(raw) // 3
    served.send(raw[:third])
    faults.set({"log.append": {"fault": "disk_full"}})
    try:
        refused = server.post({"batch": raw[third : third + 100]})
        assert refused.status_code == 503
        body = refused.json()
        assert body["error"] == "log_unavailable" and "disk is full" in body["message"]
        assert refused.headers["Retry-After"]
        status, body = readyz(server)
        # "ingest.log": serve's ingest process holds the log's writer (funnelstream/front.py).
        assert status == 503 and "disk is full" in body["failed"]["ingest.log"]
        importer = import_file(server, tmp_path / "rest.ndjson", raw[third:])
        time.sleep(1.5)  # the importer meets the full disk and retries
        assert importer.poll() is None
    finally:
        faults.set({})
    out, _ = importer.communicate(timeout=120)
    assert importer.returncode == 0, out
    served.acknowledged.extend(raw[third:])
    assert_served_exactly(server, Expected.of(served.acknowledged))
    assert readyz(server)[0] == 200


def test_killed_with_requests_in_flight_only_unacknowledged_events_are_missing(
    served: Served, tmp_path: Path
) -> None:
    """SIGKILL while four clients have requests in flight. After the restart every
    acknowledged event is stored and only unacknowledged ones may be missing; the import
    command sending the unacknowledged ones again makes every number exact (a resend of
    an event that did land is deduplicated)."""
    rng = random.Random(seed(32))
    raw = shop_traffic(visitors=size(300, 8000), seed=seed(32))
    parts = batches(raw, 20)
    acked: set[int] = set()
    server = served.server
    before = len(served.acknowledged)

    def send(mine: list[int]) -> None:
        for i in mine:
            try:
                if server.post({"batch": parts[i]}).status_code == 202:
                    acked.add(i)
            except httpx.HTTPError:
                return  # killed under us: this batch may or may not be stored

    senders = [
        threading.Thread(target=send, args=(list(range(k, len(parts), 4)),)) for k in range(4)
    ]
    for t in senders:
        t.start()
    wait_until(lambda: len(acked) >= len(parts) // 4, "a quarter acknowledged")
    time.sleep(rng.uniform(0.0, 0.2))
    server.kill9()
    for t in senders:
        t.join(30)
    assert len(acked) < len(parts), "the kill came too late to leave anything in flight"
    served.acknowledged.extend(e for i in sorted(acked) for e in parts[i])

    served.restart()
    server = served.server
    server.wait_processed(timeout=120)
    assert len(served.acknowledged) <= stats(server)["events"] <= before + len(raw)
    unacked = [e for i in range(len(parts)) if i not in acked for e in parts[i]]
    importer = import_file(server, tmp_path / "unacked.ndjson", unacked)
    out, _ = importer.communicate(timeout=120)
    assert importer.returncode == 0, out
    served.acknowledged.extend(unacked)
    assert_served_exactly(server, Expected.of(served.acknowledged))
