"""Loading stored definitions: a row that no longer validates is quarantined, never a
reason to fail the load; the rest load exactly as saved."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import SecretStr

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, migration_files
from funnelstream.config import Project, ProjectConfig
from processor.catalog import FunnelCatalog, QuarantinedFunnel
from query_api import funnel_store
from query_api.funnel_store import StoredVersion
from schemas.funnels import FunnelDefinition

CONFIG_FUNNEL = FunnelDefinition.model_validate(
    {"id": "checkout", "project": "shop", "steps": [{"event": "a"}, {"event": "b"}]}
)
CONFIG = ProjectConfig((Project("shop", SecretStr("w"), SecretStr("r")),), (CONFIG_FUNNEL,))


def definition(fid: str, op: str, value: object) -> dict[str, object]:
    step = {"event": "b", "filters": [{"property": "k", "op": op, "value": value}]}
    return {"id": fid, "project": "shop", "steps": [{"event": "a"}, step]}


def store(ch: ClickHouse, fid: str, text: str, version: int = 1, archived: bool = False) -> None:
    now = datetime.now(UTC)
    asyncio.run(
        funnel_store.write(
            ch, StoredVersion("shop", fid, version, text, now, now if archived else None)
        )
    )


@pytest.mark.clickhouse
def test_invalid_rows_are_quarantined_and_the_rest_load(ch: ClickHouse) -> None:
    big = definition("big", "eq", 10**30)  # exact beyond 64 bits, as pydantic wrote it
    store(ch, "big", FunnelDefinition.model_validate(big).model_dump_json())
    store(ch, "nan", orjson.dumps(definition("nan", "gt", None)).decode().replace("null", "NaN"))
    huge = orjson.dumps(definition("huge", "gt", 1)).decode()
    store(ch, "huge", huge.replace('"value":1', '"value":1e999'))
    store(ch, "re", orjson.dumps(definition("re", "regex", "(?=x)")).decode())
    store(ch, "junk", "not json")

    loaded = funnel_store.load_all_sync(ch, CONFIG)

    assert sorted(f.id for f in loaded.funnels) == ["big", "checkout"]
    [loaded_big] = [f for f in loaded.funnels if f.id == "big"]
    assert loaded_big.steps[1].filters[0].value == 10**30
    assert [(q.funnel_id, q.code) for q in loaded.quarantined] == [
        ("huge", "number_out_of_range"),
        ("junk", "definition_invalid"),
        ("nan", "number_out_of_range"),
        ("re", "regex_invalid"),
    ]
    assert all(q.reason for q in loaded.quarantined)


def test_catalog_reports_quarantine_once_and_a_good_save_lifts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = QuarantinedFunnel("shop", "x", "regex_invalid", "steps[0].filters[0].value: ...")
    caplog.set_level(logging.WARNING)
    catalog = FunnelCatalog([CONFIG_FUNNEL], [bad])
    catalog.replace([CONFIG_FUNNEL], [bad])  # a refresh finding the same row
    assert caplog.text.count("quarantined") == 1
    assert catalog.quarantined("shop") == [bad] and catalog.quarantined("other") == []
    labels = {"project": "shop", "funnel": "x", "code": "regex_invalid"}
    assert metrics.REGISTRY.get_sample_value("funnelstream_funnels_quarantined", labels) == 1

    good = CONFIG_FUNNEL.model_copy(update={"id": "x"})
    catalog.upsert(good)
    assert catalog.quarantined("shop") == []
    assert catalog.get("shop", "x") is good
    assert metrics.REGISTRY.get_sample_value("funnelstream_funnels_quarantined", labels) is None


@pytest.mark.clickhouse
def test_the_newest_version_loads_and_an_archived_funnel_does_not(ch: ClickHouse) -> None:
    one = definition("flow", "eq", "a")
    two = definition("flow", "eq", "b")
    store(ch, "flow", orjson.dumps(one).decode(), version=1)
    store(ch, "flow", orjson.dumps(two).decode(), version=2)
    store(ch, "gone", orjson.dumps(definition("gone", "eq", 1)).decode(), archived=True)
    # A stored funnel under a config funnel's id (a read key could save one before): the
    # config file's definition is the one advanced.
    store(ch, "checkout", orjson.dumps(definition("checkout", "eq", 1)).decode())

    loaded = funnel_store.load_all_sync(ch, CONFIG)

    assert {f.id: f for f in loaded.funnels}["flow"].steps[1].filters[0].value == "b"
    assert sorted(f.id for f in loaded.funnels) == ["checkout", "flow"]
    assert [f for f in loaded.funnels if f.id == "checkout"] == [CONFIG_FUNNEL]
    assert loaded.versions == {("shop", "flow"): 2}


@pytest.mark.clickhouse
def test_the_previous_release_funnels_become_version_1(ch: ClickHouse) -> None:
    """0011_funnel_versions.sql's copy of the `funnels` rows, run on rows as the previous
    release wrote them (the end-to-end upgrade: tests/e2e/test_upgrade.py)."""
    saved_ns = 1_735_689_600_123_456_789
    rows = [
        ("shop", "kept", orjson.dumps(definition("kept", "eq", 1)).decode(), saved_ns, 0),
        ("shop", "replaced", "old", saved_ns, 0),
        (
            "shop",
            "replaced",
            orjson.dumps(definition("replaced", "eq", 2)).decode(),
            saved_ns + 1,
            0,
        ),
        ("shop", "deleted", "x", saved_ns, 0),
        ("shop", "deleted", "", saved_ns + 1, 1),
    ]
    ch.insert_sync(
        "funnels", rows, ("project_id", "funnel_id", "definition", "version", "is_deleted")
    )
    [sql] = [text for _, name, text in migration_files() if name.endswith("_funnel_versions.sql")]
    code = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    [copy] = [s for s in code.split(";") if "INSERT INTO funnel_versions" in s]
    ch.command_sync(copy)

    stored = asyncio.run(funnel_store.latest(ch, "shop"))
    assert [(s.funnel_id, s.version, s.archived) for s in stored] == [
        ("kept", 1, False),
        ("replaced", 1, False),
    ]
    assert stored[0].saved_at == datetime(2025, 1, 1, 0, 0, 0, 123000, UTC)
    loaded = funnel_store.load_all_sync(ch, CONFIG)
    assert {f.id: f for f in loaded.funnels}["replaced"].steps[1].filters[0].value == 2
