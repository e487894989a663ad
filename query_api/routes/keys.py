"""API keys of the admin key's own project: create (the key shown once), list, revoke.

The store and its rules are funnelstream/key_store.py; these routes are its HTTP face.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from funnelstream.http_errors import ErrorOut, keyed_route_errors
from funnelstream.keys import KeyRecord
from query_api.deps import AdminProject, ClickHouseDep, KeyStoreDep, SettingsDep

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=keyed_route_errors(404, 409, 503))

MAX_LABEL_LENGTH = 200


class KeyIn(BaseModel):
    scope: Literal["write", "read", "admin"]
    label: str = Field(default="", max_length=MAX_LABEL_LENGTH)


class KeyOut(BaseModel):
    key_id: str
    project: str
    scope: str
    label: str
    # "config": from the config file, read-only here; "stored": created by CLI or API.
    source: str
    created_at: datetime | None
    revoked_at: datetime | None


class CreatedKeyOut(KeyOut):
    key: str = Field(description="The key itself. Shown only in this answer: store it now.")


class KeyListOut(BaseModel):
    keys: list[KeyOut]


def _out(record: KeyRecord) -> KeyOut:
    return KeyOut(
        key_id=record.key_id,
        project=record.project_id,
        scope=record.scope,
        label=record.label,
        source=record.source,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=CreatedKeyOut,
    summary="Create a key for this project (the key is in this answer only)",
)
async def create_key(
    body: KeyIn,
    project: AdminProject,
    keys: KeyStoreDep,
    ch: ClickHouseDep,
    settings: SettingsDep,
) -> CreatedKeyOut:
    """409 `key_limit_reached` past `max_keys_per_project` active stored keys: revoke one
    first (counted over the keys this process last loaded)."""
    active = [r for r in keys.records(project.id) if r.source == "stored" and not r.revoked_at]
    if len(active) >= settings.max_keys_per_project:
        raise HTTPException(
            409,
            {
                "error": "key_limit_reached",
                "message": f"a project holds at most {settings.max_keys_per_project} active"
                " keys (max_keys_per_project); revoke one first",
            },
        )
    new = await asyncio.to_thread(keys.create_sync, ch, project.id, body.scope, body.label)
    record = next(r for r in keys.records(project.id) if r.key_id == new.key_id)
    return CreatedKeyOut(**_out(record).model_dump(), key=new.plaintext)


@router.get("", response_model=KeyListOut, summary="This project's keys (no secrets)")
async def list_keys(project: AdminProject, keys: KeyStoreDep) -> KeyListOut:
    """Config file keys and stored keys, revoked ones included (with `revoked_at`), as
    this process last loaded them."""
    return KeyListOut(keys=[_out(r) for r in keys.records(project.id)])


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    summary="Revoke a key (refused everywhere within key_refresh_seconds)",
    responses={
        404: {"model": ErrorOut, "description": "No such key in this project"},
        409: {"model": ErrorOut, "description": "A config file key: remove it from the file"},
    },
)
async def revoke_key(
    key_id: str, project: AdminProject, keys: KeyStoreDep, ch: ClickHouseDep
) -> KeyOut:
    """Revoking twice answers the first revocation again."""
    if any(r.key_id == key_id and r.source == "config" for r in keys.records(project.id)):
        raise HTTPException(
            409,
            {
                "error": "config_key_read_only",
                "field": "key_id",
                "message": "a config file key is revoked by removing it from the config file",
            },
        )
    record = await asyncio.to_thread(keys.revoke_sync, ch, key_id, project.id)
    if record is None:
        raise HTTPException(404, {"error": "key_not_found", "field": "key_id", "message": key_id})
    return _out(record)
