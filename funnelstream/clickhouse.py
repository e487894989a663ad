"""One ClickHouse client for every stage: `chdb://` (embedded engine) or `http(s)://`.

clickhouse-connect speaks to both with the same API and SQL. Its client calls block, so
they run in worker threads. The embedded engine is a single in-process session that must
not be used from two threads at once, so for `chdb://` every call is serialized.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver import exceptions as driver_errors

from funnelstream.faults import FaultPlan


class ClickHouseUnavailable(Exception):
    """ClickHouse did not take a write or answer a query for a reason that passes
    (down, overloaded, a timeout): retry later, never drop."""


class ClickHouseQueryError(Exception):
    """ClickHouse refused the statement itself (syntax, unknown identifier, bad argument,
    type mismatch): a bug or a bad input that no retry can fix."""

    def __init__(self, code: int | None, message: str, sql: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sql = sql


# Server error codes that mean "try later" (src/Common/ErrorCodes.cpp in ClickHouse):
# overload, limits that drain, timeouts, network and replication trouble. Every other
# code is an error in the statement or its data.
TRANSIENT_CODES = frozenset(
    {
        95,  # CANNOT_READ_FROM_SOCKET
        96,  # CANNOT_WRITE_TO_SOCKET
        159,  # TIMEOUT_EXCEEDED
        173,  # CANNOT_ALLOCATE_MEMORY
        198,  # DNS_ERROR
        201,  # QUOTA_EXPIRED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        216,  # QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING
        225,  # NO_ZOOKEEPER
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE
        244,  # UNEXPECTED_ZOOKEEPER_ERROR
        252,  # TOO_MANY_PARTS
        254,  # NO_ACTIVE_REPLICAS
        265,  # NO_AVAILABLE_REPLICA
        279,  # ALL_CONNECTION_TRIES_FAILED
        285,  # TOO_FEW_LIVE_REPLICAS
        286,  # UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
        289,  # REPLICA_IS_NOT_IN_QUORUM
        319,  # UNKNOWN_STATUS_OF_INSERT
        364,  # RECEIVED_ERROR_TOO_MANY_REQUESTS
        369,  # ALL_REPLICAS_ARE_STALE
        373,  # SESSION_IS_LOCKED
        384,  # PART_IS_TEMPORARILY_LOCKED
        394,  # QUERY_WAS_CANCELLED (e.g. the server is shutting down)
        410,  # EXTERNAL_SERVER_IS_NOT_RESPONDING
        415,  # ALL_REPLICAS_LOST
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        473,  # DEADLOCK_AVOIDED
        700,  # USER_SESSION_LIMIT_EXCEEDED
        733,  # TABLE_IS_BEING_RESTARTED
        745,  # SERVER_OVERLOADED
        749,  # TCP_CONNECTION_LIMIT_REACHED
        762,  # HTTP_CONNECTION_LIMIT_REACHED
        776,  # RESOURCE_LIMIT_EXCEEDED
        777,  # MEMORY_RESERVATION_KILLED
        778,  # MEMORY_RESERVATION_FAILED
        904,  # TOO_MANY_UNAVAILABLE_SHARDS
        999,  # KEEPER_EXCEPTION
    }
)
# Raised by the client before or instead of a server answer because of what was sent
# (a value the column type cannot take, a misused API): retrying sends the same again.
_CLIENT_SIDE = (
    driver_errors.ProgrammingError,
    driver_errors.DataError,
    driver_errors.NotSupportedError,
    driver_errors.InterfaceError,
    ValueError,
    TypeError,
)
# chdb's own errors (and server messages) read "Code: 62. DB::Exception: ...".
_CODE_IN_MESSAGE = re.compile(r"\bCode:\s*(\d+)\.")


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of a driver or chdb error, if it carries one."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    for err in (exc, exc.__cause__):
        if err is not None and (match := _CODE_IN_MESSAGE.search(str(err))):
            return int(match.group(1))
    return None


def classify(exc: Exception, sql: str) -> ClickHouseUnavailable | ClickHouseQueryError:
    """The one place a driver error becomes ours: transient or not."""
    code = error_code(exc)
    if code is not None:
        if code in TRANSIENT_CODES:
            return ClickHouseUnavailable(f"{type(exc).__name__}: {exc}")
        return ClickHouseQueryError(code, str(exc), sql)
    if isinstance(exc, _CLIENT_SIDE):
        return ClickHouseQueryError(None, f"{type(exc).__name__}: {exc}", sql)
    # No code and not about the statement: connection refused or reset, a timeout, a
    # proxy's 502/503, a dropped stream.
    return ClickHouseUnavailable(f"{type(exc).__name__}: {exc}")


def _open(dsn: str) -> Any:
    if dsn.startswith("chdb://"):
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=dsn)


# The embedded engine is one session per process and data path, however many clients
# open it (two apps in one test process, a key reload next to a query): one lock per path.
_ENGINE_LOCKS: dict[str, threading.Lock] = {}
_ENGINE_LOCKS_GUARD = threading.Lock()


def _engine_lock(dsn: str) -> threading.Lock:
    with _ENGINE_LOCKS_GUARD:
        return _ENGINE_LOCKS.setdefault(dsn, threading.Lock())


# An insert's deduplication token makes a retry of the same write a no-op on the engine
# (tables need `non_replicated_deduplication_window`, migration 0014): the copies a
# materialized view makes of the block are deduplicated with it.
def _dedup_settings(token: str) -> dict[str, Any]:
    return {
        "insert_deduplication_token": token,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }


class ClickHouse:
    def __init__(self, dsn: str, faults: FaultPlan | None = None) -> None:
        """`faults`: test-only injected failures (funnelstream/faults.py), asked before and
        after every call to the real engine."""
        self.dsn = dsn
        self.faults = faults
        self.embedded = dsn.startswith("chdb://")
        try:
            self._client = _open(dsn)
        except Exception as exc:  # the client connects (and asks the version) on open
            raise classify(exc, "-- connect") from exc
        self._lock = _engine_lock(dsn) if self.embedded else threading.Lock()

    def _call(self, kind: str, sql: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`kind`: "insert", "query" or "command" (a fault point's name); `sql`: the
        statement, kept on a `ClickHouseQueryError` for the log."""
        try:
            fault = None
            if self.faults is not None:
                fault = self.faults.take(("clickhouse." + kind, "clickhouse"), sql)
                if fault is not None and not fault.after:
                    raise fault.error(sql)
            if self.embedded:
                with self._lock:
                    result = fn(*args, **kwargs)
            else:
                result = fn(*args, **kwargs)
            if fault is not None:  # ambiguous: the engine has done it, the caller is told not
                raise fault.error(sql)
            return result
        except Exception as exc:
            raise classify(exc, sql) from exc

    # blocking API (worker threads, CLI)
    def query_rows_sync(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        result = self._call("query", sql, self._client.query, sql, parameters=parameters or {})
        return [tuple(r) for r in result.result_rows]

    def command_sync(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self._call("command", sql, self._client.command, sql, parameters=parameters or {})

    def insert_sync(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        dedup_token: str | None = None,
    ) -> None:
        """`dedup_token`: the same token on a retried insert makes it a no-op where the
        first attempt landed (an ambiguous failure), instead of a second copy."""
        if rows:
            self._call(
                "insert",
                f"INSERT INTO {table}",
                self._client.insert,
                table,
                list(rows),
                column_names=list(columns),
                settings=_dedup_settings(dedup_token) if dedup_token else None,
            )

    # async API (services)
    async def query_rows(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self.query_rows_sync, sql, parameters)

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        await asyncio.to_thread(self.command_sync, sql, parameters)

    async def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        dedup_token: str | None = None,
    ) -> None:
        await asyncio.to_thread(self.insert_sync, table, rows, columns, dedup_token)

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


def split_statements(sql: str) -> list[str]:
    """A migration file's statements, comment lines dropped (none of ours has a `;` inside
    a literal)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


SCHEMA_MIGRATIONS_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (number UInt32, name String, "
    "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY number"
)


def migrate(
    ch: ClickHouse, statements_of: Callable[[str], list[str]] = split_statements
) -> list[str]:
    """Apply the migrations not applied yet; return their names. `statements_of`: how a
    migration file becomes statements (funnelstream/cluster_schema.py for a cluster)."""
    for statement in statements_of(SCHEMA_MIGRATIONS_SQL):
        ch.command_sync(statement)
    done = {row[0] for row in ch.query_rows_sync("SELECT number FROM schema_migrations")}
    applied = []
    for number, name, sql in migration_files():
        if number in done:
            continue
        for statement in statements_of(sql):
            ch.command_sync(statement)
        ch.insert_sync("schema_migrations", [(number, name)], ["number", "name"])
        applied.append(name)
    return applied
