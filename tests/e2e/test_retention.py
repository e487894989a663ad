"""A project's `retention_days` reaches the stored tables: after a `funnelstream serve`
start, every table with visitor data has the project's TTL (the expiry itself:
tests/funnelstream/test_retention.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.server import CONFIG, Server

pytestmark = pytest.mark.clickhouse

# Read in a process of its own: the embedded engine opens one data path per process.
READ_TTLS = """
import sys
from funnelstream.clickhouse import ClickHouse
ch = ClickHouse("chdb://" + sys.argv[1])
for name, query in ch.query_rows_sync(
    "SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase()"
):
    print(name, "TTL" in query and "toIntervalDay(30)" in query)
"""


def ttls(data_dir: Path) -> dict[str, bool]:
    out = subprocess.run(
        [sys.executable, "-c", READ_TTLS, str((data_dir / "clickhouse").resolve())],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {name: flag == "True" for name, flag in (line.split() for line in out.splitlines())}


def test_a_projects_retention_becomes_the_tables_ttl(tmp_path: Path) -> None:
    config = CONFIG.replace('read_key = "rk_test"', 'read_key = "rk_test"\nretention_days = 30')
    server = Server(tmp_path / "data", config).start()
    server.stop()
    found = ttls(tmp_path / "data")
    for table in (
        "events",
        "sessions",
        "funnel_state",
        "funnel_transitions",
        "funnel_transitions_by_time",
        "visitor_identities",
        "processor_state",
        "visitor_funnel_progress",
        "dead_letters",
    ):
        assert found[table], table
    assert not found["funnels"]
