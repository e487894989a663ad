"""Retention: TTLs from the projects' retention, expiring rows on the real engine."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ConfigError, Project, ProjectConfig, parse_config
from funnelstream.retention import (
    DAY_MS,
    EXPIRING,
    Expiring,
    apply_retention,
    log_retention_ms,
    retention_days,
    ttl_expression,
)

WEEK_MS = 7 * DAY_MS


def test_days_per_project_from_the_config_or_the_setting() -> None:
    text = """
[[projects]]
id = "short"
write_key = "w1"
read_key = "r1"
retention_days = 30

[[projects]]
id = "default"
write_key = "w2"
read_key = "r2"
"""
    assert retention_days(parse_config(text), 400) == {"short": 30, "default": 400}
    for bad in ("-1", "1.5", '"30"', "true", "36501"):
        with pytest.raises(ConfigError, match=r"projects\[short\].retention_days"):
            parse_config(text.replace("retention_days = 30", f"retention_days = {bad}"))


def test_log_keeps_no_longer_than_the_shortest_retention() -> None:
    assert log_retention_ms({"a": 3, "b": 0}, WEEK_MS) == 3 * DAY_MS
    assert log_retention_ms({"a": 30}, WEEK_MS) == WEEK_MS
    assert log_retention_ms({"a": 0}, WEEK_MS) == WEEK_MS
    assert log_retention_ms({"a": 0}, None) is None
    assert log_retention_ms({"a": 30, "b": 90}, None) == 30 * DAY_MS


def test_no_ttl_while_every_project_keeps_everything() -> None:
    for table in EXPIRING:
        assert ttl_expression(table, {"a": 0, "b": 0}) is None
    # Dead letters (no project) keep the longest: forever if one project keeps forever.
    dead = Expiring("dead_letters", "recorded_at", None)
    assert ttl_expression(dead, {"a": 3, "b": 0}) is None
    assert (
        ttl_expression(dead, {"a": 3, "b": 9})
        == "toDateTime(recorded_at, 'UTC') + toIntervalDay(9)"
    )


NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=40)
FRESH = NOW - timedelta(days=1)


def _insert(ch: ClickHouse, table: Expiring, project: str, at: datetime, n: int) -> None:
    name = f"{project}-{n}"
    if table.project == "project_id":
        ch.insert_sync(table.table, [(project, name, at)], ["project_id", "visitor_id", table.time])
    elif table.project is None:
        ch.insert_sync(
            table.table, [(at, n, f'"p":"{project}"')], [table.time, "log_offset", "payload"]
        )
    else:
        ch.insert_sync(table.table, [(f"{project}\x1f{name}", at)], ["visitor_key", table.time])


def _left(ch: ClickHouse, table: str) -> int:
    ch.command_sync(f"OPTIMIZE TABLE {table} FINAL")
    ((n,),) = ch.query_rows_sync(f"SELECT count() FROM {table}")
    return int(n)


@pytest.fixture
def no_ttl_after(ch: ClickHouse) -> Iterator[ClickHouse]:
    # One engine serves the session: other tests' rows must not expire.
    yield ch
    import asyncio

    asyncio.run(apply_retention(ch, {}))


@pytest.mark.clickhouse
async def test_expired_rows_go_fresh_rows_and_forever_projects_stay(
    no_ttl_after: ClickHouse,
) -> None:
    ch = no_ttl_after
    days = retention_days(
        ProjectConfig(
            (
                Project("short", SecretStr("w1"), SecretStr("r1"), retention_days=30),
                Project("forever", SecretStr("w2"), SecretStr("r2")),
            ),
            (),
        ),
        0,
    )
    # Dead letters keep the longest retention, forever here: no TTL.
    with_ttl = sorted(t.table for t in EXPIRING if t.table != "dead_letters")
    assert sorted(await apply_retention(ch, days)) == with_ttl
    assert await apply_retention(ch, days) == []  # unchanged: nothing altered
    for table in EXPIRING:
        if table.table == "funnel_transitions_by_time":
            continue  # filled by the view from funnel_transitions
        for n, (project, at) in enumerate(
            [("short", OLD), ("short", FRESH), ("forever", OLD), ("forever", FRESH)]
        ):
            _insert(ch, table, project, at, n)
    for table in EXPIRING:
        # Dead letters keep the longest retention: "forever" keeps its rows forever.
        want = 4 if table.table == "dead_letters" else 3
        assert _left(ch, table.table) == want, table.table

    # Shorter everywhere: the stored rows expire by the new TTL too.
    days = {"short": 30, "forever": 30}
    await apply_retention(ch, days)
    for table in EXPIRING:
        ch.command_sync(f"ALTER TABLE {table.table} MATERIALIZE TTL SETTINGS mutations_sync = 2")
        assert _left(ch, table.table) == 2, table.table
