"""SIGTERM `funnelstream serve` while several clients send batches: it stops on its own
(ingest first, then the processor), every event answered 202 is stored exactly once, and
after a restart and the resend of what was not acknowledged the funnel is exact."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from funnelstream.demo import storefront
from tests.e2e.load import Senders, stored_event_ids
from tests.e2e.server import Server, stats

pytestmark = [pytest.mark.clickhouse, pytest.mark.slow]

BATCH = 100
CLIENTS = 4
# At most 80 batches a second: the stream lasts longer than the stop takes.
PACE = 0.05
EVERYTHING = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def test_sigterm_mid_stream_loses_no_accepted_event(tmp_path: Path) -> None:
    traffic = storefront(visitors=8000, start_ms=int(time.time() * 1000) - 7200_000, seed=7)
    batches = [traffic.events[i : i + BATCH] for i in range(0, len(traffic.events), BATCH)]
    data = tmp_path / "data"

    # No batch is due for 60 s, so the processor's stop comes with its batch applied and
    # not yet written: what is stored after the stop, the stop wrote.
    server = Server(
        data, FUNNELSTREAM_BATCH_MAX_SECONDS="60", FUNNELSTREAM_BATCH_IDLE_SECONDS="60"
    ).start()
    senders = Senders(server.base, batches, list(range(len(batches))), CLIENTS, PACE).start()
    try:
        senders.wait_acked(len(batches) // 5)
        assert server.proc is not None
        stopping = time.monotonic()
        server.proc.terminate()  # SIGTERM, mid-stream
        # uvicorn ends a graceful stop by raising the signal it caught again (exit 143).
        assert server.proc.wait(60) == -signal.SIGTERM
        stopped_in = time.monotonic() - stopping
    finally:
        senders.stop()
        server.stop()  # nothing left running if the stop failed
    acked_first = set(senders.acked)
    assert 0 < len(acked_first) < len(batches), "the stop came after the stream"
    log = server.log_path.read_text()
    # In order: ingest stopped on its own (not killed), then the processor let go.
    assert "killing it" not in log
    assert log.index("ingest process (pid") < log.index("revoked partitions")
    # Seen within a second, though its poll may wait for the batch period (60 s): not
    # cancelled after the supervisor's grace period (15 s).
    assert stopped_in < 12
    written_on_stop = stored_event_ids(data)
    assert written_on_stop, "the processor's stop did not write its batch"

    # Restart; resend what was not acknowledged, and one acknowledged batch (a client
    # that missed its answer): event ids keep both from counting twice.
    server = Server(data).start()
    try:
        todo = [i for i in range(len(batches)) if i not in acked_first]
        Senders(server.base, batches, [min(acked_first), *todo], CLIENTS).start().drain()
        server.wait_processed(timeout=120)
        report = server.report(**EVERYTHING)
        assert [s["visitors"] for s in report["steps"]] == traffic.reached
        assert [s["reached"] for s in server.live()["stages"]] == traffic.reached
        totals = stats(server)
        assert totals["events"] == len(traffic.events)
        assert totals["dead_letters"] == 0
    finally:
        server.stop()
    stored = stored_event_ids(data)
    assert set(stored) == {e["event_id"] for e in traffic.events}
    assert max(stored.values()) == 1, [i for i, n in stored.items() if n > 1][:5]
    print(
        f"stopped in {stopped_in:.1f}s with {len(acked_first)}/{len(batches)} batches "
        f"acknowledged, {senders.failures} refused or cut while stopping, "
        f"{len(written_on_stop)} events written by the processor's stop"
    )
