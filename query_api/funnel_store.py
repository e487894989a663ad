"""Saved funnel definitions: the config file's, plus those saved through the API."""

from __future__ import annotations

import time

import orjson

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ProjectConfig
from schemas.funnels import FunnelDefinition


async def save(ch: ClickHouse, funnel: FunnelDefinition) -> None:
    await ch.insert(
        "funnels",
        [(funnel.project, funnel.id, funnel.model_dump_json(), time.time_ns(), 0)],
        ("project_id", "funnel_id", "definition", "version", "is_deleted"),
    )


async def delete(ch: ClickHouse, project: str, funnel_id: str) -> None:
    await ch.insert(
        "funnels",
        [(project, funnel_id, "", time.time_ns(), 1)],
        ("project_id", "funnel_id", "definition", "version", "is_deleted"),
    )


def load_all_sync(ch: ClickHouse, config: ProjectConfig) -> list[FunnelDefinition]:
    """Config funnels, overridden by API-saved ones with the same (project, id)."""
    merged = {(f.project, f.id): f for f in config.funnels}
    rows = ch.query_rows_sync("SELECT definition FROM funnels FINAL WHERE is_deleted = 0")
    for (definition,) in rows:
        funnel = FunnelDefinition.model_validate(orjson.loads(definition))
        merged[(funnel.project, funnel.id)] = funnel
    return list(merged.values())
