"""SIGTERM split mode mid-stream: `funnelstream ingest` and `funnelstream process` against
a real broker, while several clients send batches. Ingest stops taking requests and
answers the ones in flight once Kafka has them; the processor writes and commits its
batch before it leaves the group. After a restart and the resend of what was not
acknowledged, every event is stored exactly once and the funnel is exact."""

from __future__ import annotations

import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.load import Batch, Senders, stored_event_ids
from tests.e2e.server import Server, stats
from tests.kafka.helpers import EVERYTHING, kafka_server, traffic, unique, wait_caught_up

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

BATCH = 100
CLIENTS = 4
# At most 80 batches a second: the stream lasts longer than the stop takes.
PACE = 0.05


def _sigterm(*servers: Server) -> None:
    procs = [s.proc for s in servers]
    for proc in procs:
        assert proc is not None
        proc.terminate()
    for proc in procs:
        assert proc is not None
        # uvicorn ends a graceful stop by raising the signal it caught again (exit 143).
        assert proc.wait(60) == -signal.SIGTERM


def start_all(*servers: Server) -> None:
    with ThreadPoolExecutor(len(servers)) as pool:
        # A longer wait than one start's: they share the machine's cores.
        for started in pool.map(lambda s: s.start(timeout=240), servers):
            assert started is not None


def _first_life(
    processor: Server, front: Server, batches: list[Batch], data: Path
) -> tuple[set[int], Counter[str]]:
    """Send, SIGTERM ingest and the processor mid-stream: the batches acknowledged, and
    the events stored once they stopped."""
    senders = Senders(front.base, batches, list(range(len(batches))), CLIENTS, PACE).start()
    senders.wait_acked(len(batches) // 4)
    _sigterm(front, processor)
    senders.stop()
    acked = set(senders.acked)
    assert 0 < len(acked) < len(batches), "the stop came after the stream"
    assert "revoked partitions" in processor.log_path.read_text()  # it left the group
    written_on_stop = stored_event_ids(data)
    assert written_on_stop, "the processor's stop did not write its batch"
    return acked, written_on_stop


def test_sigterm_ingest_and_processor_mid_stream(tmp_path: Path, kafka_bootstrap: str) -> None:
    t = traffic(visitors=4000, seed=5)
    events = t.demo.events
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    topic, group = unique("shutdown"), unique("processors")
    data = tmp_path / "core"

    def ingest(life: int) -> Server:
        return kafka_server("ingest", tmp_path / f"ingest{life}", kafka_bootstrap, topic, group)

    # No batch is due for 60 s (and the stream is smaller than one), so the processor's
    # stop comes with its batch applied and not yet written: what is stored after the
    # stop, the stop wrote.
    processor = kafka_server(
        "process",
        data,
        kafka_bootstrap,
        topic,
        group,
        FUNNELSTREAM_BATCH_MAX_SECONDS="60",
        FUNNELSTREAM_BATCH_IDLE_SECONDS="60",
    )
    # The second life's ingest is started now too: starts take seconds here, in parallel.
    front, next_front = ingest(1), ingest(2)
    started = [processor, front, next_front]
    try:
        start_all(processor, front, next_front)
        acked_first, written_on_stop = _first_life(processor, front, batches, data)

        # The processor's next life is `serve` (processor + query API: the embedded
        # engine opens in one process only); a new ingest takes the resends.
        core = kafka_server("serve", data, kafka_bootstrap, topic, group)
        started.append(core)
        core.start()
        todo = [i for i in range(len(batches)) if i not in acked_first]
        Senders(next_front.base, batches, [min(acked_first), *todo], CLIENTS).start().drain()
        wait_caught_up(core, len(events), timeout=120)
        report = core.report(**EVERYTHING)
        assert [s["visitors"] for s in report["steps"]] == t.reached
        assert [s["reached"] for s in core.live()["stages"]] == t.reached
        assert stats(core)["dead_letters"] == 0
    finally:
        for server in started:
            server.stop()
    stored = stored_event_ids(data)
    assert set(stored) == {e["event_id"] for e in events}
    assert max(stored.values()) == 1, [i for i, n in stored.items() if n > 1][:5]
    print(
        f"{len(acked_first)}/{len(batches)} batches acknowledged before the stop, "
        f"{len(written_on_stop)} events written by the processor's stop"
    )
