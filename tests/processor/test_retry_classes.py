"""The processor retries what is transient and fails loudly on what is not, over the
embedded log and the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, ClickHouseQueryError, ClickHouseUnavailable
from funnelstream.log import LogRecord
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.fixtures.clickhouse import InterceptedClickHouse

pytestmark = pytest.mark.clickhouse

FUNNEL = FunnelDefinition.model_validate(
    {"id": "f", "project": "p", "steps": [{"event": "view"}, {"event": "buy"}]}
)
T0 = 1_760_000_000_000
CONFIG = ProcessorConfig(batch_max_seconds=0.05, retry_initial_seconds=0.05, retry_max_seconds=0.1)


class RenamedEvents(InterceptedClickHouse):
    """The real engine, writing events to a table that does not exist: a real SQL error."""

    async def intercept(self, table: str, rows: Sequence[Sequence[Any]]) -> str:
        return "events_gone" if table == "events" else table


class Outage(InterceptedClickHouse):
    """The real engine, refusing the first `failures` event writes as unavailable."""

    def __init__(self, real: ClickHouse, failures: int) -> None:
        super().__init__(real)
        self.failures = failures

    async def intercept(self, table: str, rows: Sequence[Sequence[Any]]) -> str:
        if table == "events" and self.failures > 0:
            self.failures -= 1
            raise ClickHouseUnavailable("injected outage")
        return table


async def log_with_events(tmp_path: Path, n: int = 6) -> EmbeddedLog:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    producer = log.producer("events")
    await producer.start()
    events = [
        Event(
            project_id="p",
            event_id=f"00000000-0000-4000-8000-{i:012d}",
            event="view" if i % 2 else "buy",
            visitor_id=f"v{i // 2}",
            timestamp_ms=T0 + i * 1000,
            received_at_ms=T0,
        )
        for i in range(n)
    ]
    await producer.append([LogRecord(e.partition_key(), encode(e), T0) for e in events])
    return log


def write_retries() -> float:
    return metrics.REGISTRY.get_sample_value("funnelstream_processor_write_retries_total") or 0.0


async def test_a_query_error_fails_the_run_at_once_and_commits_nothing(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = await log_with_events(tmp_path)
    retries = write_retries()
    processor = Processor(log, RenamedEvents(ch), FunnelCatalog([FUNNEL]), CONFIG)
    with pytest.raises(ClickHouseQueryError) as caught:
        await asyncio.wait_for(processor.run(asyncio.Event()), 30)
    assert caught.value.code == 60  # UNKNOWN_TABLE
    assert write_retries() == retries  # not retried: no retry can create the table
    reader = log.consumer("events", CONFIG.group)
    assert [await reader.committed(p) for p in (0, 1)] == [None, None]


async def test_an_outage_is_retried_and_reported_while_it_lasts(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = await log_with_events(tmp_path)
    retries = write_retries()
    outage = Outage(ch, failures=3)
    processor = Processor(log, outage, FunnelCatalog([FUNNEL]), CONFIG)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    seen: dict[str, str] = {}
    for _ in range(600):
        seen = seen or processor.problems()
        if processor.processed_messages >= 6:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert seen.keys() == {"clickhouse"}
    assert "injected outage" in seen["clickhouse"]
    assert processor.problems() == {}  # the write went through: ready again
    assert write_retries() - retries == 3
    ((stored,),) = ch.query_rows_sync("SELECT count() FROM events FINAL")
    assert stored == 6
