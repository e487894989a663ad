"""API keys: scopes, the key format, hashing, and which project a presented key opens.

Three scopes, one per kind of caller:

- write (`wk_`): public, shipped in storefront pages; ingest only (`POST /v1/events`).
- read  (`rk_`): the query routes (reports, live, stats); changes nothing.
- admin (`ak_`): funnel definitions, keys, erasure.

A key is never kept in plain text: every key, from the config file or created through the
CLI or admin API, is held as HMAC-SHA256(server secret, key). Generated keys carry 192
random bits, so a slow password hash (argon2, scrypt) adds nothing against guessing and
would cost milliseconds on every ingest request; the secret, kept out of ClickHouse, means
a leaked key table cannot even be checked offline. This module is pure: the table and
the refresh live in funnelstream/key_store.py.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from funnelstream.config import Project, ProjectConfig

Scope = Literal["write", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("write", "read", "admin")
PREFIXES: dict[Scope, str] = {"write": "wk_", "read": "rk_", "admin": "ak_"}
Source = Literal["config", "stored"]

# 48 bits of key id: shown in lists and used to revoke, never a secret.
KEY_ID_BYTES = 6
# 192 bits of secret: the part that makes a key unguessable.
KEY_SECRET_BYTES = 24


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as listed: everything but its secret."""

    key_id: str
    project_id: str
    scope: Scope
    label: str
    source: Source
    created_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HashedKey:
    record: KeyRecord
    digest: bytes


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: `plaintext` is shown once and never stored."""

    key_id: str
    scope: Scope
    plaintext: str


@dataclass(frozen=True, slots=True)
class WrongScope:
    """A valid key of another scope than the one a route needs (403, not 401)."""

    project: Project
    held: Scope
    needed: Scope


def key_digest(secret: bytes, key: str) -> bytes:
    # surrogatepass: a JSON body can carry lone surrogates ("\\ud800"); they hash (and
    # match nothing) instead of raising. Header values arrive as latin-1 text, always
    # encodable.
    return hmac.new(secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def generate(scope: Scope, taken: Iterable[str] = ()) -> NewKey:
    """A new key of `scope`: prefix, public key id, random secret."""
    used = set(taken)
    while True:
        key_id = secrets.token_hex(KEY_ID_BYTES)
        if key_id not in used:
            break
    plaintext = f"{PREFIXES[scope]}{key_id}_{secrets.token_urlsafe(KEY_SECRET_BYTES)}"
    return NewKey(key_id, scope, plaintext)


def config_key_id(project_id: str, scope: Scope) -> str:
    # Config keys have no id of their own; this one names where they come from.
    return f"config:{project_id}:{scope}"


def config_keys(config: ProjectConfig, secret: bytes) -> list[HashedKey]:
    """The config file's keys, hashed at load: read-only, always active."""
    out = []
    for p in config.projects:
        held: list[tuple[Scope, str]] = [
            ("write", p.write_key.get_secret_value()),
            ("read", p.read_key.get_secret_value()),
        ]
        if p.admin_key is not None:
            held.append(("admin", p.admin_key.get_secret_value()))
        for scope, plaintext in held:
            record = KeyRecord(config_key_id(p.id, scope), p.id, scope, "config file", "config")
            out.append(HashedKey(record, key_digest(secret, plaintext)))
    return out


class KeyRing:
    """An immutable snapshot of the active keys, looked up by digest."""

    def __init__(self, config: ProjectConfig, secret: bytes, keys: Iterable[HashedKey]) -> None:
        self._secret = secret
        self._projects = {p.id: p for p in config.projects}
        # Revoked keys and keys of projects no longer in the config open nothing.
        self._by_digest = {
            k.digest: k
            for k in keys
            if k.record.revoked_at is None and k.record.project_id in self._projects
        }

    def authorize(self, key: str, needed: Scope) -> Project | WrongScope | None:
        """The project `key` opens for a route needing `needed`; WrongScope for a valid key
        of another scope; None for an unknown (or revoked) key."""
        digest = key_digest(self._secret, key)
        found = self._by_digest.get(digest)
        # The dict finds by digest; the constant-time compare is on bytes, so no input
        # can make it raise. Timing of the dict lookup reveals HMAC outputs of the
        # attacker's own guesses, which without the secret say nothing of stored keys.
        if found is None or not hmac.compare_digest(found.digest, digest):
            return None
        project = self._projects[found.record.project_id]
        if found.record.scope != needed:
            return WrongScope(project, found.record.scope, needed)
        return project
