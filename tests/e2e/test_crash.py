"""kill -9 the embedded server mid-stream, restart, resend what was not acknowledged:
every number is exact (nothing lost, nothing counted twice)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from funnelstream.demo import storefront
from tests.e2e.server import Server, stats

pytestmark = [pytest.mark.clickhouse, pytest.mark.slow]

BATCH = 200


def send_until_killed(
    server: Server, batches: list[list[dict[str, object]]], todo: list[int], acked: set[int]
) -> None:
    for i in todo:
        try:
            r = server.post({"batch": batches[i]})
        except httpx.HTTPError:
            return  # the server died under us: this batch may or may not be stored
        if r.status_code == 202:
            acked.add(i)


@pytest.mark.parametrize("seed", [11])
def test_kill9_mid_stream_then_resend_unacked(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    traffic = storefront(visitors=6000, start_ms=int(time.time() * 1000) - 7200_000, seed=seed)
    batches = [traffic.events[i : i + BATCH] for i in range(0, len(traffic.events), BATCH)]
    acked: set[int] = set()
    data = tmp_path / "data"
    kills = 0

    for _ in range(3):  # three crashes while sending
        server = Server(data).start()
        todo = [i for i in range(len(batches)) if i not in acked]
        # Also resend one already-acknowledged batch: its event ids must dedupe.
        if acked:
            todo.insert(0, rng.choice(sorted(acked)))
        sender = threading.Thread(target=send_until_killed, args=(server, batches, todo, acked))
        sender.start()
        time.sleep(rng.uniform(0.5, 2.0))
        server.kill9()
        kills += 1
        sender.join(30)

    # A crash while the processor is catching up, after everything was sent.
    server = Server(data).start()
    send_until_killed(server, batches, [i for i in range(len(batches)) if i not in acked], acked)
    assert acked == set(range(len(batches)))
    time.sleep(rng.uniform(0.1, 0.5))
    server.kill9()

    server = Server(data).start()
    try:
        server.wait_processed(timeout=180)
        report = server.report(**{"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
        assert [s["visitors"] for s in report["steps"]] == traffic.reached
        assert [s["reached"] for s in server.live()["stages"]] == traffic.reached
        totals = stats(server)
        assert totals["events"] == len(traffic.events)
        assert totals["visitors"] == traffic.reached[0]
        assert totals["funnel_transitions"] == sum(traffic.reached)
        assert totals["dead_letters"] == 0
    finally:
        server.stop()
    assert kills == 3
