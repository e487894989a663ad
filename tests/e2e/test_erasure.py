"""Erasure through a real `funnelstream serve` process: the admin key's DELETE routes and
the `funnelstream erase` command, then reports, live stages and visitor lists without
the erased visitors (every table: tests/processor/test_erase.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import CONFIG, READ, Server

pytestmark = pytest.mark.clickhouse

ADMIN_KEY = "ak_test"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WINDOW = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data", CONFIG).start()  # its config has admin_key ak_test
    yield s
    s.stop()


def erase(server: Server, *who: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "funnelstream.cli", "erase", "--host", server.base, *who],
        env={"FUNNELSTREAM_ADMIN_KEY": ADMIN_KEY, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


def dropped(server: Server) -> list[str]:
    r = httpx.get(
        f"{server.base}/v1/funnels/checkout/dropped",
        params={"step": "1", **WINDOW},
        headers=READ,
        timeout=30,
    )
    r.raise_for_status()
    return sorted(v["visitor_id"] for v in r.json()["visitors"])


def test_erased_visitors_leave_reports_live_and_lists(server: Server) -> None:
    # Two days ago, so every attempt's 1-day window is closed: each visitor is "dropped".
    start = int(time.time() * 1000) - 2 * 86_400_000
    people = {"a": "", "b": "", "c/slash": "", "d1": "u", "d2": "u"}
    batch = [
        {"event": name, "visitor_id": v, "user_id": user, "timestamp": start + k * 1000}
        for v, user in people.items()
        for k, name in enumerate(["page_view", "product_view"])
    ]
    assert server.post({"batch": batch}).status_code == 202
    server.wait_processed()
    assert dropped(server) == ["a", "b", "c/slash", "d1", "d2"]

    # Only the admin key erases.
    r = httpx.delete(f"{server.base}/v1/visitors/a", headers=READ, timeout=10)
    assert r.status_code == 403  # a read key: insufficient_scope
    r = httpx.delete(f"{server.base}/v1/visitors/c%2Fslash", headers=ADMIN, timeout=10)
    assert r.status_code == 202, r.text
    assert r.json()["visitors"] == ["c/slash"]
    done = erase(server, "--visitor", "a")
    assert done.returncode == 0, done.stderr
    done = erase(server, "--user", "u")
    assert done.returncode == 0, done.stderr
    assert "2 visitor(s)" in done.stdout
    assert erase(server, "--visitor", "nobody").returncode == 0
    server.wait_processed()

    assert dropped(server) == ["b"]
    report = server.report(**WINDOW)
    assert [s["visitors"] for s in report["steps"]][:2] == [1, 1]
    assert [s["reached"] for s in server.live()["stages"]][:2] == [1, 1]
    stats = httpx.get(f"{server.base}/v1/stats", headers=READ, timeout=30).json()
    assert stats["events"] == 2
