"""Loading stored definitions: a row that no longer validates is quarantined, never a
reason to fail the load; the rest load exactly as saved."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
from pydantic import SecretStr

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from processor.catalog import FunnelCatalog, QuarantinedFunnel
from query_api import funnel_store
from schemas.funnels import FunnelDefinition

CONFIG_FUNNEL = FunnelDefinition.model_validate(
    {"id": "checkout", "project": "shop", "steps": [{"event": "a"}, {"event": "b"}]}
)
CONFIG = ProjectConfig((Project("shop", SecretStr("w"), SecretStr("r")),), (CONFIG_FUNNEL,))


def definition(fid: str, op: str, value: object) -> dict[str, object]:
    step = {"event": "b", "filters": [{"property": "k", "op": op, "value": value}]}
    return {"id": fid, "project": "shop", "steps": [{"event": "a"}, step]}


def store(ch: ClickHouse, fid: str, text: str) -> None:
    ch.insert_sync(
        "funnels",
        [("shop", fid, text, time.time_ns(), 0)],
        ("project_id", "funnel_id", "definition", "version", "is_deleted"),
    )


@pytest.mark.clickhouse
def test_invalid_rows_are_quarantined_and_the_rest_load(ch: ClickHouse) -> None:
    big = definition("big", "eq", 10**30)  # exact beyond 64 bits, as pydantic wrote it
    asyncio.run(funnel_store.save(ch, FunnelDefinition.model_validate(big)))
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
