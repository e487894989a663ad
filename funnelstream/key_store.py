"""Where API keys live: the server secret, the `api_keys` table, and each process's copy.

Keys created through the CLI or the admin API are rows of the ClickHouse table
`api_keys` (digest only). Every process that authenticates (ingest, query API) holds a
`KeyStore`: the config file's keys, hashed at load, plus the stored keys, reloaded every
`key_refresh_seconds` by a supervised task (`KeyRefresh`). So a key revoked through any
process stops working in every process within that bound. When a reload fails the last
loaded keys stay in use (ingest keeps accepting known keys) and the failure is shown as
the "keys" component of `/readyz` and in metrics.

`funnelstream serve` runs ingest in a process that cannot open the embedded engine (one
process per engine), so the process that owns it also writes every change of its stored
keys to a snapshot file in the data directory (digests only, mode 0600, replaced whole),
which the ingest process reloads on the same period (`KeySnapshotRefresh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, ClickHouseQueryError, ClickHouseUnavailable
from funnelstream.config import (
    PLACEHOLDER_KEYS,
    CommonSettings,
    ConfigError,
    Project,
    ProjectConfig,
)
from funnelstream.keys import (
    SCOPES,
    HashedKey,
    KeyRecord,
    KeyRing,
    NewKey,
    Scope,
    WrongScope,
    config_keys,
    generate,
    key_digest,
)
from funnelstream.supervise import describe

log = logging.getLogger(__name__)

SECRET_FILE = "key_secret"
SNAPSHOT_FILE = "key_snapshot.json"
SNAPSHOT_FORMAT = 1
MIN_SECRET_LENGTH = 32
COLUMNS = (
    "key_id",
    "project_id",
    "scope",
    "digest",
    "label",
    "created_at",
    "revoked_at",
    "version",
)


def load_secret(settings: CommonSettings) -> bytes:
    """The HMAC secret: FUNNELSTREAM_KEY_SECRET, or in local mode the data directory's
    generated one. Checked at startup: a wrong secret would silently open no stored key."""
    if settings.key_secret is not None:
        value = settings.key_secret.get_secret_value()
        if settings.mode != "local" and (
            value.lower() in PLACEHOLDER_KEYS or len(value) < MIN_SECRET_LENGTH
        ):
            raise ConfigError(
                f"key_secret: a placeholder or short secret is refused outside local mode "
                f"(need {MIN_SECRET_LENGTH}+ random characters)"
            )
        if not value:
            raise ConfigError("key_secret: must not be empty")
        return value.encode()
    if settings.mode != "local":
        raise ConfigError(
            "FUNNELSTREAM_KEY_SECRET is required outside local mode (the same value in every "
            f"process sharing one ClickHouse; {MIN_SECRET_LENGTH}+ random characters)"
        )
    return _local_secret(settings.data_dir)


def _local_secret(data_dir: Path) -> bytes:
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked into place: a process starting at
        # the same time reads either no file or the complete one, never half of it.
        tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won; use its secret
        finally:
            tmp.unlink()
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{path}: the key secret is shorter than {MIN_SECRET_LENGTH} chars")
    return value.encode()


# the table


def _row_key(row: tuple[object, ...]) -> HashedKey | None:
    key_id, project_id, scope, digest, label, created_at, revoked_at = row
    if scope not in SCOPES:
        return None  # written by a newer release; not a key this one can place
    try:
        digest_bytes = bytes.fromhex(str(digest))
    except ValueError:
        return None  # not written by us; opens nothing rather than stopping every reload
    record = KeyRecord(
        str(key_id),
        str(project_id),
        scope,
        str(label),
        "stored",
        _utc(cast(datetime, created_at)),
        _utc(cast(datetime, revoked_at)) if revoked_at is not None else None,
    )
    return HashedKey(record, digest_bytes)


def _utc(at: datetime) -> datetime:
    # The client returns DateTime64(3, 'UTC') without a zone.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _now() -> datetime:
    # At the table's precision, so this process's copy equals what a reload reads.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


_SELECT = (
    "SELECT key_id, project_id, scope, digest, label, created_at, revoked_at FROM api_keys FINAL"
)


def load_stored_sync(ch: ClickHouse) -> list[HashedKey]:
    """Every stored key, revoked ones included (they are listed, and open nothing)."""
    rows = ch.query_rows_sync(_SELECT + " ORDER BY created_at, key_id")
    return [k for row in rows if (k := _row_key(row)) is not None]


def _insert_sync(ch: ClickHouse, key: HashedKey, version: int) -> None:
    r = key.record
    ch.insert_sync(
        "api_keys",
        [
            (
                r.key_id,
                r.project_id,
                r.scope,
                key.digest.hex(),
                r.label,
                r.created_at,
                r.revoked_at,
                version,
            )
        ],
        COLUMNS,
    )


def _snapshot_doc(stored: list[HashedKey]) -> bytes:
    def at(t: datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    keys = [
        {
            "key_id": k.record.key_id,
            "project_id": k.record.project_id,
            "scope": k.record.scope,
            "digest": k.digest.hex(),
            "label": k.record.label,
            "created_at": at(k.record.created_at),
            "revoked_at": at(k.record.revoked_at),
        }
        for k in stored
    ]
    return json.dumps({"format": SNAPSHOT_FORMAT, "written_at": time.time(), "keys": keys}).encode()


def write_snapshot(path: Path, stored: list[HashedKey]) -> None:
    """Replace the snapshot whole (a reader sees the old file or the new one), owner-only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_snapshot_doc(stored))
    os.replace(tmp, path)


def read_snapshot(path: Path) -> tuple[float, list[HashedKey]]:
    """When the snapshot was written, and its keys. OSError or ValueError: unreadable."""
    doc = json.loads(path.read_bytes())
    if doc.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"unknown key snapshot format {doc.get('format')!r}")
    keys = []
    for k in doc["keys"]:
        created, revoked = k["created_at"], k["revoked_at"]
        row = (
            k["key_id"],
            k["project_id"],
            k["scope"],
            k["digest"],
            k["label"],
            datetime.fromisoformat(created) if created else _now(),
            datetime.fromisoformat(revoked) if revoked else None,
        )
        if (key := _row_key(row)) is not None:
            keys.append(key)
    return float(doc["written_at"]), keys


class KeyStore:
    """This process's keys: the config file's and the stored ones, as one `KeyRing`."""

    def __init__(self, config: ProjectConfig, secret: bytes) -> None:
        self.config = config
        self._secret = secret
        self._config_keys = config_keys(config, secret)
        self._stored: list[HashedKey] = []
        self.ring = KeyRing(config, secret, self._config_keys)
        self._problem: str | None = None
        self._failing_since: float | None = None
        self.loaded_at: float | None = None
        # Where this store writes its stored keys at every change, for the ingest process
        # of `serve` (None: nobody reads them).
        self.snapshot_path: Path | None = None
        # A reload and a create or revoke in this process, each a read and a replace, in
        # turn: a reload begun before a create must not drop the key just created.
        self._writing = threading.Lock()
        self._count_active()

    @classmethod
    def config_only(cls, config: ProjectConfig) -> KeyStore:
        """The config file's keys under a throwaway secret: for an app with no key table."""
        return cls(config, secrets.token_bytes(32))

    def authorize(self, key: str, needed: Scope) -> Project | WrongScope | None:
        return self.ring.authorize(key, needed)

    def problem(self) -> str | None:
        return self._problem

    def records(self, project_id: str | None = None) -> list[KeyRecord]:
        """Config keys first, then stored ones by creation; no secrets."""
        keys = [k.record for k in self._config_keys + self._stored]
        return [r for r in keys if project_id is None or r.project_id == project_id]

    def _replace(self, stored: list[HashedKey]) -> None:
        self._stored = stored
        self.ring = KeyRing(self.config, self._secret, self._config_keys + stored)
        self._count_active()
        if self.snapshot_path is not None:
            try:
                write_snapshot(self.snapshot_path, stored)
            except OSError as exc:
                # The change itself is stored: a create or revoke must not fail over it.
                # The ingest process sees the snapshot grow old and shows `ingest.keys`.
                log.warning("key snapshot not written: %s", exc)

    def reload_from_snapshot(self, path: Path, stale_after: float) -> None:
        """Replace the stored keys with the snapshot's. An unreadable or stale snapshot
        keeps the last keys and is recorded as this store's problem."""
        try:
            written_at, stored = read_snapshot(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.reload_failed(f"key snapshot {path.name}: {describe(exc)}")
            return
        with self._writing:
            self._replace(stored)
        age = time.time() - written_at
        if age > stale_after:
            # The owner rewrites it at every reload: an old file means its reloads fail.
            self.reload_failed(f"key snapshot {path.name} is {age:.0f}s old")
            return
        self.loaded_at = time.time()
        self._problem = None
        self._failing_since = None
        metrics.KEYS_LOADED_AT.set(self.loaded_at)

    def _count_active(self) -> None:
        for scope in SCOPES:
            active = [r for r in self.records() if r.scope == scope and r.revoked_at is None]
            metrics.KEYS_ACTIVE.labels(scope).set(len(active))

    def reload_sync(self, ch: ClickHouse) -> None:
        """Replace the stored keys with the table's. A failure keeps the last ones, is
        recorded as this store's problem, and is raised."""
        try:
            with self._writing:
                self._replace(load_stored_sync(ch))
        except (ClickHouseUnavailable, ClickHouseQueryError) as exc:
            self.reload_failed(describe(exc))
            raise
        self.loaded_at = time.time()
        self._problem = None
        self._failing_since = None
        metrics.KEYS_LOADED_AT.set(self.loaded_at)

    def reload_failed(self, reason: str) -> None:
        now = time.time()
        if self._failing_since is None:
            self._failing_since = now
        since = datetime.fromtimestamp(self._failing_since, UTC).strftime("%H:%M:%SZ")
        loaded = (
            datetime.fromtimestamp(self.loaded_at, UTC).strftime("%H:%M:%SZ")
            if self.loaded_at is not None
            else "never (config file keys only)"
        )
        self._problem = (
            f"key reload failing since {since}, using the keys loaded at {loaded} "
            f"(revocations since then are not seen here): {reason}"
        )
        metrics.KEY_REFRESH_FAILURES.inc()

    def create_sync(self, ch: ClickHouse, project_id: str, scope: Scope, label: str) -> NewKey:
        """Store a new key; it works in this process at once, elsewhere after a reload."""
        if project_id not in {p.id for p in self.config.projects}:
            raise ValueError(f"unknown project {project_id!r}")
        with self._writing:
            new = generate(scope, taken=(k.record.key_id for k in self._stored))
            record = KeyRecord(new.key_id, project_id, scope, label, "stored", _now())
            key = HashedKey(record, key_digest(self._secret, new.plaintext))
            _insert_sync(ch, key, time.time_ns())
            self._replace([*self._stored, key])
        return new

    def revoke_sync(
        self, ch: ClickHouse, key_id: str, project_id: str | None = None
    ) -> KeyRecord | None:
        """Revoke a stored key (of `project_id`, when given). None: no such key there.
        Read from the table, not this process's copy, which may not have it yet."""
        with self._writing:
            rows = ch.query_rows_sync(
                _SELECT.replace("SELECT ", "SELECT version, ", 1) + " WHERE key_id = {id:String}",
                {"id": key_id},
            )
            if not rows:
                return None
            version = int(cast(int, rows[0][0]))
            key = _row_key(rows[0][1:])
            if key is None or (project_id is not None and key.record.project_id != project_id):
                return None
            if key.record.revoked_at is None:
                key = HashedKey(replace(key.record, revoked_at=_now()), key.digest)
                # Never below the created row's version, whatever this host's clock says.
                _insert_sync(ch, key, max(time.time_ns(), version + 1))
            others = [k for k in self._stored if k.record.key_id != key_id]
            self._replace([*others, key])
        return key.record


class KeyRefresh:
    """Reloads a `KeyStore` every `every` seconds, starting at once. `connect` opens the
    ClickHouse connection on first use (and again after a failed open), so an ingest
    process starts, with its config keys, while ClickHouse is down."""

    def __init__(
        self,
        store: KeyStore,
        connect: Callable[[], ClickHouse],
        every: float,
        *,
        owns_connection: bool = False,
    ) -> None:
        self._store = store
        self._connect = connect
        self._every = every
        self._owns = owns_connection
        self._ch: ClickHouse | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            # Keys loaded at start (the app's connection) are not loaded again at once.
            due_now = self._store.loaded_at is None
            while not stop.is_set():
                if due_now:
                    await self._once()
                due_now = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._every)
        finally:
            if self._owns and self._ch is not None:
                self._ch.close()
                self._ch = None

    async def _once(self) -> None:
        try:
            if self._ch is None:
                self._ch = await asyncio.to_thread(self._connect)
        except (ClickHouseUnavailable, ClickHouseQueryError) as exc:
            self._store.reload_failed(f"cannot connect: {describe(exc)}")
            log.warning("key reload: cannot connect to ClickHouse: %s", exc)
            return
        try:
            await asyncio.to_thread(self._store.reload_sync, self._ch)
        except (ClickHouseUnavailable, ClickHouseQueryError) as exc:
            log.warning("key reload failed, keeping the last keys: %s", exc)


class KeySnapshotRefresh:
    """Reloads a `KeyStore` from the owner's snapshot every `every` seconds (the ingest
    process of `funnelstream serve`). A snapshot not rewritten for three periods is stale:
    the owner's reloads from ClickHouse are failing, so revocations may be missed."""

    def __init__(self, store: KeyStore, path: Path, every: float) -> None:
        self._store = store
        self._path = path
        self._every = every
        # Three periods, and never under 15 s: the owner's rewrite may lag a short period.
        self.stale_after = max(3 * every, 15.0)

    def load(self) -> None:
        self._store.reload_from_snapshot(self._path, self.stale_after)

    async def run(self, stop: asyncio.Event) -> None:
        # Keys loaded at start (before the first request) are not loaded again at once.
        due_now = self._store.loaded_at is None
        while not stop.is_set():
            if due_now:
                await asyncio.to_thread(self.load)
            due_now = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)
