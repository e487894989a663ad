"""The whole stack as real processes on loopback, one processor member killed mid-stream.

Two `funnelstream ingest` processes append to a real broker; one `funnelstream process
--with-query-api` process owns the embedded ClickHouse engine and runs three processor
group members (`FUNNELSTREAM_PROCESSOR_MEMBERS=3`, each its own consumer in the group)
and the query API. The embedded engine opens in one process only, so the members
share it; a member is killed with SIGUSR1, which abandons it as a crash would
(funnelstream/processor_members.py; docs/scaling.md says what changes with a server).

Several clients, each a share of the visitors (a browser sends its own events in order),
send a generated storefront day, alternating between the two ingest ports. After the
kill and catch-up every number equals the oracle (tests/oracle/funnel_reference.py) and
the traffic generator: the events stored, once each by id (read from the engine after
the owner stopped), sessions, the live stages, the stage gauges summed over the members
and the report.

`FUNNELSTREAM_TEST_STACK_LONG=1`: 20,000 visitors and three kills (6.5 minutes here, on
a 2-core machine shared with other work).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, stats
from tests.kafka.helpers import (
    EVERYTHING,
    FUNNEL,
    PARTITIONS,
    health,
    kafka_server,
    metric_samples,
    traffic,
    unique,
    wait_caught_up,
)
from tests.oracle import funnel_reference as reference

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

LONG = os.environ.get("FUNNELSTREAM_TEST_STACK_LONG") == "1"
VISITORS = 20_000 if LONG else 2_500
KILLS = 3 if LONG else 1
MEMBERS = 3
CLIENTS = 4
BATCH = 100
RESENDS = 30
MEMBER_NAMES = {f"processor.{i}" for i in range(1, MEMBERS + 1)}

STORED_IDS = """
import json, sys
from funnelstream.clickhouse import ClickHouse
ch = ClickHouse("chdb://" + sys.argv[1])
rows = ch.query_rows_sync("SELECT toString(event_id), count() FROM events FINAL GROUP BY event_id")
print(json.dumps({i: int(n) for i, n in rows}))
"""


class Clients:
    """`CLIENTS` threads, each sending its visitors' events in order in batches of
    `BATCH`, alternating between the ingest processes; `sent` counts acknowledged events."""

    def __init__(self, events: list[dict[str, Any]], ingests: list[Server]) -> None:
        self.sent = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        shares: list[list[dict[str, Any]]] = [[] for _ in range(CLIENTS)]
        for e in events:
            shares[zlib.crc32(str(e["visitor_id"]).encode()) % CLIENTS].append(e)
        self._threads = [
            threading.Thread(target=self._send, args=(share, ingests, i), daemon=True)
            for i, share in enumerate(shares)
        ]

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self._threads:
            t.join(300)
        assert not self.errors, self.errors[:3]

    def _send(self, share: list[dict[str, Any]], ingests: list[Server], first: int) -> None:
        try:
            for n, start in enumerate(range(0, len(share), BATCH)):
                batch = share[start : start + BATCH]
                self._deliver(batch, ingests[(first + n) % len(ingests)])
                with self._lock:
                    self.sent += len(batch)
                time.sleep(0.01)  # a stream, not one burst: the kill lands mid-stream
        except Exception as exc:  # reported by `join`, not lost with the thread
            self.errors.append(repr(exc))

    @staticmethod
    def _deliver(batch: list[dict[str, Any]], ingest: Server) -> None:
        """As the snippet does: a 503 or 429 (or no answer) is sent again, same event
        ids, after a pause; anything else but 202 for every event is a failure."""
        for _ in range(RESENDS):
            try:
                r = ingest.post({"batch": batch})
            except httpx.TransportError:
                time.sleep(1)
                continue
            if r.status_code in (429, 503):
                time.sleep(float(r.headers.get("retry-after", "1")))
                continue
            assert r.status_code == 202 and r.json() == {"accepted": len(batch)}, r.text
            return
        raise AssertionError(f"not accepted after {RESENDS} sends")


def readyz(server: Server) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{server.base}/readyz", timeout=10)
    body: dict[str, Any] = r.json()
    return r.status_code, body


def kill_member(owner: Server) -> tuple[str, dict[str, Any]]:
    """SIGUSR1 to the owner; until /readyz names the killed member, and then while it
    is failing, until /healthz shows it holding nothing (before its restart rejoins).
    The killed member's name and the health seen at the kill."""
    assert owner.proc is not None
    deadline = time.monotonic() + 60
    while readyz(owner)[0] != 200:  # an earlier kill's member is back and settled
        assert time.monotonic() < deadline, readyz(owner)
        time.sleep(0.1)
    before = health(owner)
    owner.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 15
    killed: list[str] = []
    while not killed:
        assert time.monotonic() < deadline, f"no member failing in /readyz: {readyz(owner)}"
        status, body = readyz(owner)
        if status == 503:
            killed = [
                name
                for name, why in body["failed"].items()
                if name in MEMBER_NAMES and "MemberKilled" in why
            ]
        time.sleep(0.05)
    (name,) = killed
    # Its old consumer left the group at the kill; its restart holds nothing until the
    # group has rebalanced again. Seen while /readyz still says it failed.
    while (h := health(owner))["members"][name]:
        assert readyz(owner)[0] == 503, f"{name} ready again, never seen holding nothing: {h}"
        time.sleep(0.05)
    return name, before


def stage_gauges(server: Server) -> dict[str, int]:
    """Step → `funnelstream_funnel_visitors_at_stage` of the checkout funnel."""
    text = httpx.get(f"{server.base}/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if (
            line.startswith("funnelstream_funnel_visitors_at_stage{")
            and 'funnel="checkout"' in line
        ):
            step = re.search(r'step="(\d+)"', line)
            assert step is not None, line
            out[step.group(1)] = int(float(line.rsplit(" ", 1)[1]))
    return out


def stored_ids(data_dir: Path) -> Counter[str]:
    """Event id → stored copies (FINAL), read from the engine of a stopped owner."""
    proc = subprocess.run(
        [sys.executable, "-c", STORED_IDS, str(data_dir / "clickhouse")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return Counter(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_two_ingests_three_members_one_killed_then_exact(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    started = time.monotonic()
    t = traffic(visitors=VISITORS, seed=53)
    events = t.demo.events
    topic, group = unique("stack"), unique("processors")
    owner = kafka_server(
        "process",
        tmp_path / "owner",
        kafka_bootstrap,
        topic,
        group,
        FUNNELSTREAM_PROCESSOR_MEMBERS=str(MEMBERS),
        # Small batches: several in flight when the member dies.
        FUNNELSTREAM_BATCH_MAX_MESSAGES="300",
        FUNNELSTREAM_RETRY_INITIAL_SECONDS="1",
    )
    owner.args.append("--with-query-api")  # processor members and query API: no ingest
    ingests = [
        kafka_server("ingest", tmp_path / f"ingest{i}", kafka_bootstrap, topic, group)
        for i in range(2)
    ]
    servers = [owner, *ingests]
    try:
        # Started together (each creates the topic if it is missing): most of a start is
        # imports and the engine's, which overlap.
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.start(timeout=180), servers))
        marks = {"started": time.monotonic() - started}
        deadline = time.monotonic() + 60
        while not all(health(owner).get("members", {}).values()):
            assert time.monotonic() < deadline, (
                f"members never all held partitions: {health(owner)}"
            )
            time.sleep(0.2)
        assert set(health(owner)["members"]) == MEMBER_NAMES

        marks["members"] = time.monotonic() - started
        clients = Clients(events, ingests).start()
        kills: list[tuple[str, int, int | None]] = []
        for k in range(KILLS):
            share = (k + 1) / (KILLS + 1)
            while clients.sent < share * len(events) and not clients.errors:
                time.sleep(0.02)
            name, at_kill = kill_member(owner)
            kills.append((name, clients.sent, at_kill["lag"]))
        clients.join()
        marks["sent"] = time.monotonic() - started

        wait_caught_up(owner, len(events), timeout=240)
        marks["caught_up"] = time.monotonic() - started
        deadline = time.monotonic() + 60
        while readyz(owner)[0] != 200:  # the restarted member settled
            assert time.monotonic() < deadline, readyz(owner)
            time.sleep(0.2)
        marks["ready"] = time.monotonic() - started
        h = health(owner)
        assert set(h["members"]) == MEMBER_NAMES and all(h["members"].values()), h
        assert sorted(p for held in h["members"].values() for p in held) == list(range(PARTITIONS))

        refs = [
            reference.RefEvent(
                str(e["event_id"]), str(e["event"]), str(e["visitor_id"]), int(str(e["timestamp"]))
            )
            for e in events
        ]
        totals = stats(owner)
        assert totals["events"] == len(events)
        assert totals["visitors"] == t.reached[0]
        assert totals["sessions"] == len(set(reference._sessions(refs, 0, 2**62).values()))
        assert totals["funnel_transitions"] == sum(t.reached)
        assert totals["dead_letters"] == 0

        want = reference.report(FUNNEL, refs, 0, 2**62)
        assert [s.entities for s in want] == t.reached
        report = owner.report(**EVERYTHING)
        assert [s["visitors"] for s in report["steps"]] == [s.entities for s in want]
        assert [s["median_seconds_from_start"] for s in report["steps"][1:]] == [
            s.median_ms / 1000 if s.median_ms is not None else None for s in want[1:]
        ]
        at_stage = [
            n - (t.reached[k + 1] if k + 1 < len(t.reached) else 0) for k, n in enumerate(t.reached)
        ]
        live = owner.live()["stages"]
        assert [s["reached"] for s in live] == t.reached
        assert [s["at_stage"] for s in live] == at_stage
        # The stage gauges of the scrape: every member's states, not the last one's.
        gauges = stage_gauges(owner)
        assert [gauges[str(k)] for k in range(1, len(t.reached) + 1)] == at_stage
        in_memory = metric_samples(owner, "funnelstream_processor_visitors_in_memory")
        assert in_memory[""] == t.reached[0]  # "": the owner's series ("ingest": its front's)
    finally:
        for s in servers:
            s.stop()
    # Every event sent is stored, once, by id; none that was not sent.
    stored = stored_ids(owner.data_dir)
    assert set(stored) == {str(e["event_id"]) for e in events}
    assert set(stored.values()) == {1}
    print(
        f"{len(events)} events, kills (member, events sent, lag at kill): {kills}, "
        f"{time.monotonic() - started:.1f}s; at {marks}"
    )
    assert all(lag for _, _, lag in kills), "each kill landed mid-stream (lag > 0)"
