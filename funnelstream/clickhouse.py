"""One ClickHouse client for every stage: `chdb://` (embedded engine) or `http(s)://`.

clickhouse-connect speaks to both with the same API and SQL. Its client calls block, so
they run in worker threads. The embedded engine is a single in-process session that must
not be used from two threads at once, so for `chdb://` every call is serialized.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import clickhouse_connect


class ClickHouseUnavailable(Exception):
    """ClickHouse did not take a write or answer a query: retry later, never drop."""


def _open(dsn: str) -> Any:
    if dsn.startswith("chdb://"):
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=dsn)


class ClickHouse:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.embedded = dsn.startswith("chdb://")
        self._client = _open(dsn)
        self._lock = threading.Lock()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if self.embedded:
                with self._lock:
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        except Exception as exc:  # the driver raises many types; all mean "not done"
            raise ClickHouseUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # blocking API (worker threads, CLI)
    def query_rows_sync(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        result = self._call(self._client.query, sql, parameters=parameters or {})
        return [tuple(r) for r in result.result_rows]

    def command_sync(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self._call(self._client.command, sql, parameters=parameters or {})

    def insert_sync(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        if rows:
            self._call(self._client.insert, table, list(rows), column_names=list(columns))

    # async API (services)
    async def query_rows(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self.query_rows_sync, sql, parameters)

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        await asyncio.to_thread(self.command_sync, sql, parameters)

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        await asyncio.to_thread(self.insert_sync, table, rows, columns)

    def close(self) -> None:
        with self._lock:
            self._client.close()


_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    """(number, name, sql) for every file in schemas/clickhouse, in order."""
    folder = resources.files("schemas") / "clickhouse"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(ch: ClickHouse) -> list[str]:
    """Apply the migrations not applied yet; return their names."""
    ch.command_sync(
        "CREATE TABLE IF NOT EXISTS schema_migrations (number UInt32, name String, "
        "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY number"
    )
    done = {row[0] for row in ch.query_rows_sync("SELECT number FROM schema_migrations")}
    applied = []
    for number, name, sql in migration_files():
        if number in done:
            continue
        for statement in _statements(sql):
            ch.command_sync(statement)
        ch.insert_sync("schema_migrations", [(number, name)], ["number", "name"])
        applied.append(name)
    return applied
