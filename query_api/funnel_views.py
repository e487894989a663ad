"""How funnels are shown: a list entry per funnel and an entry per version. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from processor.catalog import QuarantinedFunnel
from query_api import funnel_store
from query_api.funnel_store import StoredVersion
from schemas.funnels import FunnelDefinition


class FunnelOut(BaseModel):
    """A funnel as listed: these fields, and its definition's (steps, window_seconds, ...;
    absent on a stored definition that no longer parses). A save's answer adds `live`:
    always true (every saved funnel is advanced live)."""

    model_config = ConfigDict(extra="allow")

    id: str
    project: str
    source: Literal["config", "api"]
    version: int | None = Field(description="The current version; null for config funnels")
    status: Literal["active", "archived", "quarantined"]
    created_at: datetime | None = Field(description="When version 1 was saved")
    saved_at: datetime | None = Field(description="When the current version was saved")
    archived_at: datetime | None
    code: str | None = Field(default=None, description="Why quarantined: the rule's code")
    reason: str | None = Field(default=None, description="Why quarantined")


class VersionOut(BaseModel):
    version: int | None = Field(description="null: a config funnel's one entry")
    source: Literal["config", "api"]
    definition: dict[str, Any] | str = Field(
        description="As saved; the saved text if it no longer parses as a definition"
    )
    saved_at: datetime | None
    archived_at: datetime | None


def config_entry(funnel: FunnelDefinition, failed: QuarantinedFunnel | None) -> dict[str, Any]:
    """A config-file funnel as listed: no versions, no save times."""
    entry: dict[str, Any] = {
        **funnel.model_dump(),
        "source": "config",
        "version": None,
        "status": "active",
        "created_at": None,
        "saved_at": None,
        "archived_at": None,
    }
    return entry if failed is None else {**entry, **_quarantined(failed.code, failed.reason)}


def stored_entry(stored: StoredVersion, failed: QuarantinedFunnel | None) -> dict[str, Any]:
    """An API funnel as listed: its newest version, and whether it is advanced live."""
    entry: dict[str, Any] = {
        "id": stored.funnel_id,
        "project": stored.project,
        "source": "api",
        "version": stored.version,
        "status": "archived" if stored.archived else "active",
        "created_at": stored.created_at,
        "saved_at": stored.saved_at,
        "archived_at": stored.archived_at,
    }
    parsed = funnel_store.parse_stored(stored.definition)
    if isinstance(parsed, FunnelDefinition):
        entry = {**parsed.model_dump(), **entry}
    elif not stored.archived:
        return {**entry, **_quarantined(*parsed)}
    if failed is not None and not stored.archived:
        return {**entry, **_quarantined(failed.code, failed.reason)}
    return entry


def _quarantined(code: str, reason: str) -> dict[str, Any]:
    return {"status": "quarantined", "code": code, "reason": reason}


def as_saved(definition: str) -> Any:
    """The stored JSON as saved; text a definition no longer parses from stays text."""
    parsed = funnel_store.parse_stored(definition)
    return parsed.model_dump() if isinstance(parsed, FunnelDefinition) else definition
