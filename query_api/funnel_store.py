"""Funnel definitions: the config file's (read-only), and the versions saved through the
API (`funnel_versions`, 0011_funnel_versions.sql: every version kept, numbered 1, 2, 3...
per funnel; the newest one is the funnel, unless it is archived).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ProjectConfig
from processor.catalog import QuarantinedFunnel
from schemas.funnels import FunnelDefinition, validate_funnel

COLUMNS = (
    "project_id",
    "funnel_id",
    "version",
    "definition",
    "saved_at",
    "archived_at",
    "written_at",
)
_SELECT = "SELECT project_id, funnel_id, version, definition, saved_at, archived_at"

# Per funnel its newest version, with when the funnel was first saved. (Not argMax: it
# skips NULLs, so an archived version's archived_at would stick to the next version.)
LATEST_SQL = """
SELECT project_id, funnel_id, version, definition, saved_at, archived_at,
       min(saved_at) OVER (PARTITION BY project_id, funnel_id)
FROM funnel_versions FINAL
{where}
ORDER BY project_id, funnel_id, version DESC
LIMIT 1 BY project_id, funnel_id
"""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One saved version of an API funnel; `definition` is its JSON as saved."""

    project: str
    funnel_id: str
    version: int
    definition: str
    saved_at: datetime
    archived_at: datetime | None = None
    # When version 1 was saved (filled on the newest version by `latest`).
    created_at: datetime | None = None

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


def _version(row: tuple[Any, ...], created: Any = None) -> StoredVersion:
    project, funnel_id, version, definition, saved_at, archived_at = row[:6]
    return StoredVersion(
        str(project),
        str(funnel_id),
        int(version),
        str(definition),
        _utc(saved_at),
        None if archived_at is None else _utc(archived_at),
        None if created is None else _utc(created),
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def write(ch: ClickHouse, version: StoredVersion) -> None:
    """A version row; the same (project, funnel, version) written again replaces it."""
    await ch.insert(
        "funnel_versions",
        [
            (
                version.project,
                version.funnel_id,
                version.version,
                version.definition,
                version.saved_at,
                version.archived_at,
                time.time_ns(),
            )
        ],
        COLUMNS,
    )


async def latest(ch: ClickHouse, project: str, funnel_id: str | None = None) -> list[StoredVersion]:
    """The newest version of each of the project's API funnels (or of one), archived too."""
    where = "WHERE project_id = {p:String}"
    params = {"p": project}
    if funnel_id is not None:
        where += " AND funnel_id = {f:String}"
        params["f"] = funnel_id
    rows = await ch.query_rows(LATEST_SQL.format(where=where), params)
    return [_version(r, r[6]) for r in rows]


async def versions(ch: ClickHouse, project: str, funnel_id: str) -> list[StoredVersion]:
    """Every version of one API funnel, oldest first."""
    rows = await ch.query_rows(
        _SELECT + " FROM funnel_versions FINAL"
        " WHERE project_id = {p:String} AND funnel_id = {f:String} ORDER BY version",
        {"p": project, "f": funnel_id},
    )
    return [_version(r) for r in rows]


@dataclass(frozen=True, slots=True)
class LoadedFunnels:
    funnels: list[FunnelDefinition]
    # Stored rows that no longer load: left out, never a reason to fail the load.
    quarantined: list[QuarantinedFunnel] = field(default_factory=list)
    # (project, funnel id) -> the stored version of each API funnel loaded.
    versions: dict[tuple[str, str], int] = field(default_factory=dict)


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
    """The funnels to advance: the config file's, and the newest version of every API
    funnel not archived. A config funnel's id is the config file's: a stored funnel of
    that id (saved through the API before it refused to) is left out. Stored versions
    that no longer validate are quarantined."""
    merged = {(f.project, f.id): f for f in config.funnels}
    from_config = set(merged)
    quarantined = []
    loaded_versions = {}
    for row in ch.query_rows_sync(LATEST_SQL.format(where="")):
        stored = _version(row)
        key = (stored.project, stored.funnel_id)
        if stored.archived or key in from_config:
            continue
        parsed = parse_stored(stored.definition)
        if isinstance(parsed, FunnelDefinition):
            merged[key] = parsed
            loaded_versions[key] = stored.version
        else:
            quarantined.append(QuarantinedFunnel(*key, *parsed))
    return LoadedFunnels(list(merged.values()), quarantined, loaded_versions)


def config_funnel(config: ProjectConfig, project: str, funnel_id: str) -> FunnelDefinition | None:
    """The config file's funnel of this id, if any (read-only through the API)."""
    return next((f for f in config.funnels if f.project == project and f.id == funnel_id), None)
