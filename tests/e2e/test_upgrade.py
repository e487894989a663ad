"""A data directory made by the previous release is migrated forward on start.

The previous release's own code (extracted from this repository's history) serves a
fresh data directory and absorbs a storefront history; then the current code starts on
that directory and must report the same funnel, hold the same live state, and go on:
a resent old event is not counted twice, an old visitor's funnel continues.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest

from funnelstream.config import CommonSettings, load_config
from funnelstream.demo import STEPS, storefront
from funnelstream.key_store import KeyStore
from tests.e2e.server import ADMIN, READ, Server, stats

pytestmark = pytest.mark.clickhouse

# The last release. Bump it at each release (to that release's commit), so every
# release is tested to upgrade the data directory of the one before it.
PREVIOUS_RELEASE = "31246a9ff1a456643c69d14c376b3f117edede54"

REPO = Path(__file__).resolve().parents[2]
FROM = "2020-01-01T00:00:00Z"
TO = "2100-01-01T00:00:00Z"


def extract_release(commit: str, into: Path) -> Path:
    """The tree of `commit` as files (git archive), from the repository under test."""
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        pytest.fail(
            f"previous release {commit} is not in the repository at {REPO}: this test needs "
            "the full history (git fetch --unshallow) to build its data directory"
        )
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        capture_output=True,
        check=True,
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def snapshot(server: Server) -> dict[str, Any]:
    counts = stats(server)
    return {
        "report": [
            (s["visitors"], s["conversion_from_start"])
            for s in server.report(**{"from": FROM, "to": TO})["steps"]
        ],
        "live": [s["reached"] for s in server.live()["stages"]],
        "events": counts["events"],
        "visitors": counts["visitors"],
    }


SAVED = {
    "id": "cart_to_purchase",
    "window_seconds": 86400,
    "steps": [{"event": "add_to_cart"}, {"event": "purchase"}],
}


def wait_live_equals_report(server: Server, funnel: str) -> list[int]:
    """The funnel's live stages once they equal its report (a backfill may be running)."""
    deadline = time.monotonic() + 60
    while True:
        report = [s["visitors"] for s in server.report(funnel, **{"from": FROM, "to": TO})["steps"]]
        live = [s["reached"] for s in server.live(funnel)["stages"]]
        if live == report or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert live == report and report[-1] > 0, (live, report)
    return report


def test_a_previous_release_data_dir_is_migrated_forward(tmp_path: Path) -> None:
    release = extract_release(PREVIOUS_RELEASE, tmp_path / "release")
    data = tmp_path / "data"
    env = {"PYTHONPATH": str(release)}
    # Make sure the old server would import the old code, not this checkout's.
    where = subprocess.run(
        [sys.executable, "-c", "import funnelstream; print(funnelstream.__file__)"],
        capture_output=True,
        text=True,
        cwd=release,
        env={**os.environ, **env},
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(release), where

    traffic = storefront(visitors=300, start_ms=int(time.time() * 1000) - 3 * 3600_000, seed=9)
    old = Server(data, cwd=release, **env).start()
    try:
        for i in range(0, len(traffic.events), 500):
            r = old.post({"batch": traffic.events[i : i + 500]})
            assert r.status_code == 202, r.text
        old.wait_processed()
        # A funnel saved through the previous release's API (its read key could save).
        r = httpx.post(f"{old.base}/v1/funnels", json=SAVED, headers=READ, timeout=30)
        assert r.status_code == 201, r.text
        before = snapshot(old)
        saved_before = wait_live_equals_report(old, "cart_to_purchase")
    finally:
        old.stop()
    assert old.proc is not None and old.proc.returncode is not None
    assert [visitors for visitors, _ in before["report"]] == traffic.reached
    assert before["live"] == traffic.reached
    assert before["events"] == len(traffic.events)

    new = Server(data).start()
    try:
        new.wait_processed()
        assert httpx.get(f"{new.base}/healthz", timeout=5).status_code == 200
        assert snapshot(new) == before
        # The saved funnel loads as its version 1, with the same live state and report.
        funnel = httpx.get(f"{new.base}/v1/funnels/cart_to_purchase", headers=READ, timeout=30)
        assert funnel.status_code == 200, funnel.text
        assert (funnel.json()["version"], funnel.json()["source"]) == (1, "api")
        assert wait_live_equals_report(new, "cart_to_purchase") == saved_before
        replaced = httpx.put(
            f"{new.base}/v1/funnels/cart_to_purchase",
            json={**SAVED, "window_seconds": 3600},
            headers=ADMIN,
            timeout=30,
        )
        assert replaced.status_code == 200 and replaced.json()["version"] == 2, replaced.text
        versions = httpx.get(
            f"{new.base}/v1/funnels/cart_to_purchase/versions", headers=READ, timeout=30
        ).json()
        assert [v["version"] for v in versions] == [1, 2]

        # An old visitor who stopped after product_view goes on to add_to_cart; one old
        # event is sent again with its event_id; a new visitor arrives.
        depth = Counter(str(e["visitor_id"]) for e in traffic.events)
        walker = next(v for v, n in depth.items() if n == 2)
        last = max(int(str(e["timestamp"])) for e in traffic.events if e["visitor_id"] == walker)
        resent = traffic.events[len(traffic.events) // 2]
        r = new.post(
            {
                "batch": [
                    {"event": STEPS[2], "visitor_id": walker, "timestamp": last + 60_000},
                    resent,
                    {"event": STEPS[0], "visitor_id": "after-upgrade", "timestamp": last},
                ]
            }
        )
        assert r.status_code == 202, r.text
        new.wait_processed()
        expected = list(traffic.reached)
        expected[0] += 1  # the new visitor
        expected[2] += 1  # the old visitor's funnel continued
        deadline = time.monotonic() + 30
        while True:
            after = snapshot(new)
            if after["live"] == expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert after["live"] == expected
        assert [visitors for visitors, _ in after["report"]] == expected
        assert after["events"] == before["events"] + 2  # the resent event counted once
        assert after["visitors"] == before["visitors"] + 1
    finally:
        new.stop()


def test_a_previous_release_local_config_gets_an_admin_key(tmp_path: Path) -> None:
    """The previous release wrote the local demo config without an admin key; starting
    this release on that data directory adds one (and changes nothing else)."""
    release = extract_release(PREVIOUS_RELEASE, tmp_path / "release")
    data = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from funnelstream.config import local_config;"
            " local_config(Path(sys.argv[1]))",
            str(data),
        ],
        cwd=release,
        env={**os.environ, "PYTHONPATH": str(release)},
        check=True,
    )
    path = data / "funnelstream.toml"
    old_text = path.read_text()
    assert "admin_key" not in old_text
    path.chmod(0o640)

    config = load_config(CommonSettings(data_dir=data))  # what every start does first
    [project] = config.projects
    assert project.admin_key is not None
    new_text = path.read_text()
    # Only the one line is added, right after the read key (the README tour greps it).
    added = [line for line in new_text.splitlines() if line not in old_text.splitlines()]
    assert added == [f'admin_key = "{project.admin_key.get_secret_value()}"']
    assert project.admin_key.get_secret_value().startswith("ak_")
    assert (path.stat().st_mode & 0o777) == 0o640
    assert [f.id for f in config.funnels] == ["checkout"]
    keys = KeyStore.config_only(config)
    assert keys.authorize(project.admin_key.get_secret_value(), "admin") is project
    assert keys.authorize(project.write_key.get_secret_value(), "write") is project
    # A second start finds nothing to add.
    load_config(CommonSettings(data_dir=data))
    assert path.read_text() == new_text
