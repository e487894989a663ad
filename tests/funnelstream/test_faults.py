"""The test-only fault plan: parsing, bounds, the file switch, and the setting's gate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.config import CommonSettings
from funnelstream.faults import FaultPlan, parse_rules


def test_unknown_points_and_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault point"):
        parse_rules({"clickhouse.delete": {"fault": "refuse"}}, 0.0)
    with pytest.raises(ValueError, match="fault must be one of"):
        parse_rules({"log.append": {"fault": "ambiguous"}}, 0.0)


def test_times_bounds_a_rule_and_points_are_tried_in_order() -> None:
    plan = FaultPlan(rules={"clickhouse.insert": {"fault": "too_many_parts", "times": 2}})
    assert plan.take(("clickhouse.query", "clickhouse")) is None
    kinds = [plan.take(("clickhouse.insert", "clickhouse")) for _ in range(3)]
    assert [k.kind if k else None for k in kinds] == ["too_many_parts", "too_many_parts", None]
    assert plan.injected == {"clickhouse.insert": 2}


def test_chance_is_seeded_so_a_run_repeats() -> None:
    def draws() -> list[bool]:
        plan = FaultPlan(rules={"clickhouse": {"fault": "refuse", "chance": 0.5, "seed": 3}})
        return [plan.take(("clickhouse",)) is not None for _ in range(40)]

    first = draws()
    assert first == draws() and 5 < sum(first) < 35


def test_a_file_plan_follows_its_file(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    plan = FaultPlan(path)
    assert plan.take(("log.append",)) is None  # no file: no faults
    path.write_bytes(orjson.dumps({"log.append": {"fault": "disk_full"}}))
    fault = plan.take(("log.append",))
    assert fault is not None and isinstance(fault.error(""), sqlite3.OperationalError)
    (tmp_path / "next.json").write_bytes(b"{}")
    (tmp_path / "next.json").replace(path)
    assert plan.take(("log.append",)) is None


def test_the_setting_is_refused_unless_allowed_and_never_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNNELSTREAM_TEST_FAULTS", str(tmp_path / "f.json"))
    with pytest.raises(ValueError, match="FUNNELSTREAM_TEST_FAULTS_ALLOWED"):
        CommonSettings()
    monkeypatch.setenv("FUNNELSTREAM_TEST_FAULTS_ALLOWED", "1")
    assert CommonSettings().fault_plan() is not None
    monkeypatch.setenv("FUNNELSTREAM_MODE", "production")
    with pytest.raises(ValueError, match="production"):
        CommonSettings()


@pytest.mark.clickhouse
def test_faults_are_classified_like_the_engine_s_own_and_ambiguous_ones_land(
    ch: ClickHouse,
) -> None:
    import copy

    faulty = copy.copy(ch)
    faulty.faults = FaultPlan(rules={"clickhouse.insert": {"fault": "ambiguous", "times": 1}})
    with pytest.raises(ClickHouseUnavailable, match="Code: 209"):
        faulty.insert_sync("funnels", [("p", "f", "{}")], ["project_id", "funnel_id", "definition"])
    assert ch.query_rows_sync("SELECT count() FROM funnels") == [(1,)]  # it did land
    faulty.faults = FaultPlan(rules={"clickhouse": {"fault": "refuse"}})
    with pytest.raises(ClickHouseUnavailable, match="Code: 210"):
        faulty.query_rows_sync("SELECT 1")


def test_seconds_bounds_a_rule_in_time() -> None:
    import time

    plan = FaultPlan(rules={"clickhouse": {"fault": "refuse", "seconds": 0.2}})
    assert plan.take(("clickhouse",)) is not None
    time.sleep(0.25)
    assert plan.take(("clickhouse",)) is None
