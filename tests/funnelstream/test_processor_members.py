"""Processor members under the supervisor: names, the settings rule, and a kill that
abandons a member as a crash would (real embedded log and engine; the group of three on
a real broker is tests/kafka/test_stack.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from funnelstream.backoff import BackoffPolicy
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ProcessorSettings
from funnelstream.log.embedded import EmbeddedLog
from funnelstream.processor_members import ProcessorMembers
from funnelstream.supervise import Components, Supervisor
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from schemas.events import encode
from tests.fixtures.clickhouse import InterceptedClickHouse
from tests.processor.test_pipeline import FUNNEL, append, levels, stream


class GatedClickHouse(InterceptedClickHouse):
    """The real engine; inserts wait until `open` is set (a write in flight)."""

    def __init__(self, real: ClickHouse) -> None:
        super().__init__(real)
        self.open = asyncio.Event()

    async def intercept(self, table: str, rows: Sequence[Sequence[Any]]) -> str:
        await self.open.wait()
        return table


async def until(condition: Any, what: str) -> None:
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_member_keeps_the_name_processor_several_are_numbered() -> None:
    assert ProcessorMembers(1, lambda: None).names() == ["processor"]  # type: ignore[arg-type,return-value]
    assert ProcessorMembers(3, lambda: None).names() == [  # type: ignore[arg-type,return-value]
        "processor.1",
        "processor.2",
        "processor.3",
    ]


def test_several_members_need_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNNELSTREAM_PROCESSOR_MEMBERS", "3")
    with pytest.raises(ValidationError, match="processor_members > 1 needs log_backend kafka"):
        ProcessorSettings()
    monkeypatch.setenv("FUNNELSTREAM_LOG_BACKEND", "kafka")
    assert ProcessorSettings().processor_members == 3


@pytest.mark.clickhouse
async def test_a_killed_member_writes_and_commits_nothing_and_its_restart_is_exact(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    await log.ensure_topic("events", 2)
    events = stream()
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    gated = GatedClickHouse(ch)
    config = ProcessorConfig(batch_max_seconds=0.05, retry_initial_seconds=0.05)
    members = ProcessorMembers(1, lambda: Processor(log, gated, FunnelCatalog([FUNNEL]), config))
    components = Components()
    stop = asyncio.Event()
    supervisor = Supervisor(components, BackoffPolicy(0.05, 0.1), stop, settle_seconds=0.2)
    members.start(supervisor)
    try:
        # Every event applied; its batch's write is in flight (held at the gate).
        await until(
            lambda: (
                members.processors() and members.processors()[0].applied_messages == len(events)
            ),
            "the events applied",
        )
        first = members.processors()[0]
        assert members.kill() == "processor"
        await until(lambda: not components.state("processor").ok, "the member failing")
        assert "MemberKilled" in components.failing()["processor"]
        # Abandoned: no row written, no offset committed.
        assert ch.query_rows_sync("SELECT count() FROM events") == [(0,)]
        store = log._store  # the log's own table of commits, read without joining the group
        assert [store.committed("events", config.group, p) for p in (0, 1)] == [None, None]
        # A fresh member replays everything once the writes go through, and is ready again.
        await until(lambda: members.processors()[0] is not first, "the restart")
        gated.open.set()
        await until(lambda: members.processed_messages == len(events), "the replay written")
        await until(lambda: not components.failing(), "the member ready again")
        assert levels(ch) == {1: 10, 2: 10, 3: 10}
        assert ch.query_rows_sync("SELECT count() FROM events FINAL") == [(len(events),)]
    finally:
        gated.open.set()  # a failed check leaves no write waiting forever
        await supervisor.shutdown()
        await log.close()
