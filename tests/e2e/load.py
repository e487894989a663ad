"""Clients sending batches while a server is stopped under them, and what the embedded
engine stored afterwards, counted per event id (for the shutdown tests)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import WRITE

Batch = list[dict[str, Any]]


class Senders:
    """`clients` threads taking batches from one queue and posting them to `base`, each
    on its own keep-alive connection, until the queue is empty or `stop`. A batch answered
    202 is acknowledged; any other answer or a failed request puts it back (the client
    keeps it, as the snippet's retry queue does), to send again later. `pace`: seconds a
    client waits between two requests, so a fast machine does not finish the stream
    before a stop lands in it."""

    def __init__(
        self, base: str, batches: list[Batch], todo: list[int], clients: int, pace: float = 0.0
    ) -> None:
        self._base = base
        self._pace = pace
        self._batches = batches
        self._todo = list(reversed(todo))
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.acked: set[int] = set()
        self.failures = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"sender-{n}", daemon=True)
            for n in range(clients)
        ]

    def start(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def wait_acked(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} batches acknowledged"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive()

    def drain(self, timeout: float = 120) -> None:
        """Until every batch given was acknowledged."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not self._todo and all(not t.is_alive() for t in self._threads)

    def _take(self) -> int | None:
        with self._lock:
            return self._todo.pop() if self._todo else None

    def _run(self) -> None:
        with httpx.Client(base_url=self._base, headers=WRITE, timeout=30) as client:
            while not self._stopping.is_set():
                index = self._take()
                if index is None:
                    return
                try:
                    r = client.post("/v1/events", json={"batch": self._batches[index]})
                    ok = r.status_code == 202
                except httpx.HTTPError:
                    ok = False
                if ok:
                    with self._lock:
                        self.acked.add(index)
                    time.sleep(self._pace)
                    continue
                with self._lock:
                    self.failures += 1
                    self._todo.append(index)
                time.sleep(0.05)  # the server is going away: do not spin


def stored_event_ids(data_dir: Path) -> Counter[str]:
    """Rows per event id in the events table, read without FINAL (a stored duplicate
    shows until a merge), by a process of its own: the embedded engine opens in one
    process at a time, and the test session's is another data directory."""
    code = (
        "import json, sys\n"
        "from funnelstream.clickhouse import ClickHouse\n"
        "ch = ClickHouse(sys.argv[1])\n"
        "rows = ch.query_rows_sync("
        "'SELECT toString(event_id), count() FROM events GROUP BY event_id')\n"
        "print(json.dumps({str(i): int(n) for i, n in rows}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"chdb://{(data_dir / 'clickhouse').resolve()}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return Counter(json.loads(out.stdout.strip().splitlines()[-1]))
