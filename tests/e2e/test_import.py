"""`funnelstream import` against a real `funnelstream serve`: concurrent batches, every
timestamp form, bad lines reported by line number, and a rerun that stores nothing twice."""

from __future__ import annotations

import csv
import gzip
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from funnelstream.demo import storefront
from tests.e2e.server import Server, stats

pytestmark = pytest.mark.clickhouse

FROM = "2020-01-01T00:00:00Z"
TO = "2100-01-01T00:00:00Z"
PLUS_TWO = timezone(timedelta(hours=2))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data").start()
    yield s
    s.stop()


def _timestamp(ms: int, form: int) -> str:
    """The same instant written four ways, as exports from different tools would."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    if form == 0:
        return dt.astimezone(PLUS_TWO).isoformat(timespec="milliseconds")
    if form == 1:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    if form == 2:
        # Whole seconds: steps are at least a second apart, so their order is kept.
        return str(ms // 1000)
    return str(ms)


def _import(server: Server, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "funnelstream.cli",
            "import",
            str(path),
            "--host",
            server.base,
            "--write-key",
            "wk_test",
            "--concurrency",
            "4",
            "--batch-size",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_twice_stores_each_good_line_once(server: Server, tmp_path: Path) -> None:
    traffic = storefront(visitors=400, start_ms=int(time.time() * 1000) - 3 * 3600_000, seed=21)
    path = tmp_path / "history.csv.gz"
    bad_lines: set[int] = set()
    good = 0
    with gzip.open(path, "wt", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["event", "visitor_id", "timestamp", "properties.url", "properties.source"])
        line = 1
        for i, e in enumerate(traffic.events):
            props = e["properties"]
            assert isinstance(props, dict)
            row = [
                e["event"],
                e["visitor_id"],
                _timestamp(int(str(e["timestamp"])), i % 4),
                props["url"],
                props["utm_source"],
            ]
            out.writerow(row)
            line += 1
            good += 1
            if i == 10:
                # The same line twice (a double-logged click): two events, both stored.
                out.writerow(row)
                line += 1
                good += 1
            if i in (5, 300, 600):
                # Unreadable here; refused by ingest (no visitor; 1999-12-31T23:30Z, before 2000).
                out.writerow(["page_view", "x", "yesterday", "/", ""])
                out.writerow(["page_view", "", str(traffic.events[0]["timestamp"]), "/", ""])
                out.writerow(["page_view", "y", "2000-01-01T00:30:00+01:00", "/", ""])
                bad_lines |= {line + 1, line + 2, line + 3}
                line += 3

    for _run in range(2):
        result = _import(server, path)
        assert result.returncode == 1, result.stderr  # 1: done, some lines bad
        reported = {int(n) for n in re.findall(r"^import: line (\d+):", result.stderr, re.M)}
        assert reported == bad_lines, result.stderr
        assert f"imported {good} events" in result.stdout
        assert f"{len(bad_lines)} bad lines" in result.stdout

    server.wait_processed()
    # Deduplicated by the derived event ids: the rerun added nothing.
    assert stats(server)["events"] == good
    report = server.report(**{"from": FROM, "to": TO})
    assert [s["visitors"] for s in report["steps"]] == traffic.reached
    assert [s["reached"] for s in server.live()["stages"]] == traffic.reached


def test_an_unreadable_file_and_a_wrong_key_say_so(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("name,visitor\npage_view,v1\n")
    result = _import(server, path)
    assert result.returncode == 2
    assert "CSV header lacks column(s) event, timestamp, visitor_id" in result.stderr
    path.write_text("event,visitor_id,timestamp\npage_view,v1,2026-01-02T03:04:05Z\n")
    result = subprocess.run(
        [sys.executable, "-m", "funnelstream.cli", "import", str(path), "--host", server.base]
        + ["--write-key", "wrong"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "stopped: lines 2-2: ingest answered 401" in result.stderr
