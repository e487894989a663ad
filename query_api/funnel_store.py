"""Saved funnel definitions: the config file's, plus those saved through the API."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ProjectConfig
from processor.catalog import QuarantinedFunnel
from schemas.funnels import FunnelDefinition, validate_funnel


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


@dataclass(frozen=True, slots=True)
class LoadedFunnels:
    funnels: list[FunnelDefinition]
    # Stored rows that no longer load: left out, never a reason to fail the load.
    quarantined: list[QuarantinedFunnel] = field(default_factory=list)


def parse_stored(definition: str) -> FunnelDefinition | tuple[str, str]:
    """A stored definition, or (code, reason) when it is not one under today's rules
    (saved before a rule existed, or written by hand)."""
    try:
        # Pydantic's own JSON parser: integers beyond 64 bits stay exact (orjson would
        # turn them into floats and an eq value would drift).
        funnel = FunnelDefinition.model_validate_json(definition)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "definition"
        return "definition_invalid", f"{where}: {first['msg']}"
    problems = validate_funnel(funnel)
    if problems:
        p = problems[0]
        return p.code, f"{p.field}: {p.message}"
    return funnel


def load_all_sync(ch: ClickHouse, config: ProjectConfig) -> LoadedFunnels:
    """Config funnels, overridden by API-saved ones with the same (project, id); stored
    ones that no longer validate are quarantined (the config funnel of that id, if any,
    stays)."""
    merged = {(f.project, f.id): f for f in config.funnels}
    quarantined = []
    rows = ch.query_rows_sync(
        "SELECT project_id, funnel_id, definition FROM funnels FINAL WHERE is_deleted = 0"
        " ORDER BY project_id, funnel_id"
    )
    for project, funnel_id, definition in rows:
        parsed = parse_stored(definition)
        if isinstance(parsed, FunnelDefinition):
            merged[(parsed.project, parsed.id)] = parsed
        else:
            quarantined.append(QuarantinedFunnel(project, funnel_id, *parsed))
    return LoadedFunnels(list(merged.values()), quarantined)
