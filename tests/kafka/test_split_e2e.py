"""Split mode end to end through a real broker: two `funnelstream ingest` processes take
the HTTP traffic and append to Kafka; `funnelstream serve --log-backend kafka` consumes
(processor + query API in one process, because the embedded ClickHouse engine can be
opened by one process only; with a ClickHouse server the query API runs apart)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server, stats
from tests.kafka.helpers import (
    EVERYTHING,
    PARTITIONS,
    health,
    kafka_server,
    metric_samples,
    traffic,
    unique,
    wait_caught_up,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


@pytest.fixture
def servers(tmp_path: Path, kafka_bootstrap: str) -> Iterator[tuple[Server, list[Server]]]:
    topic = unique("split")
    group = unique("processors")
    started: list[Server] = []
    try:
        # The processor side first: it creates the topic (ingest would too).
        core = kafka_server("serve", tmp_path / "serve", kafka_bootstrap, topic, group).start()
        started.append(core)
        ingests = []
        for i in range(2):
            ingest = kafka_server(
                "ingest", tmp_path / f"ingest{i}", kafka_bootstrap, topic, group
            ).start()
            started.append(ingest)
            ingests.append(ingest)
        yield core, ingests
    finally:
        for s in started:
            s.stop()


def test_ingest_processes_to_kafka_to_processor_exact_report(
    servers: tuple[Server, list[Server]],
) -> None:
    core, ingests = servers
    assert health(ingests[0])["roles"] == ["ingest"]
    t = traffic(visitors=1500, seed=31)
    events = t.demo.events
    # Alternate batches between the two ingest processes; one visitor's events go
    # through both, and the log (key = visitor) still keeps them in one partition.
    targets = itertools.cycle(ingests)
    for i in range(0, len(events), 200):
        batch = events[i : i + 200]
        r = next(targets).post({"batch": batch})
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": len(batch)}

    h = wait_caught_up(core, len(events))
    assert h["partitions"] == list(range(PARTITIONS))

    report = core.report(**EVERYTHING)
    assert [s["visitors"] for s in report["steps"]] == t.reached
    assert [s["reached"] for s in core.live()["stages"]] == t.reached
    totals = stats(core)
    assert totals["events"] == len(events)
    assert totals["visitors"] == t.reached[0]
    assert totals["funnel_transitions"] == sum(t.reached)
    assert totals["dead_letters"] == 0

    # Prometheus: lag and committed offset per partition, from Kafka's own offsets.
    lag = metric_samples(core, "funnelstream_processor_lag_messages")
    assert lag == {str(p): 0.0 for p in range(PARTITIONS)}
    committed = metric_samples(core, "funnelstream_processor_committed_offset")
    assert set(committed) == {str(p) for p in range(PARTITIONS)}
    assert sum(committed.values()) == len(events)
    accepted = sum(
        metric_samples(s, "funnelstream_ingest_events_total").get("shop", 0) for s in ingests
    )
    assert accepted == len(events)
