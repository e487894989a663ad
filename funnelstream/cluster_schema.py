"""Our migrations rendered for a ClickHouse cluster (`FUNNELSTREAM_CLICKHOUSE_CLUSTER`).

Each table becomes a `Replicated*MergeTree` under its own name on every node, created
`ON CLUSTER`, so the processes keep reading and writing the names they know: whichever
replica a process talks to holds the whole table, and lightweight deletes, TTLs and ALTERs
on a replicated table reach every replica. Next to each, `<table>_all` is a `Distributed`
table over the cluster, for reads across shards (dashboards, ad-hoc SQL). Its sharding key
hashes columns of the table's ORDER BY, so the rows one ReplacingMergeTree key collapses
always land on one shard; visitor tables shard by visitor, keeping a visitor's events,
sessions, state and transitions together.

What the processes support today is one shard with any number of replicas: they write the
local tables of the replica they reach (docs/operations.md, "ClickHouse cluster").

A statement of a shape this module does not know is refused (`UnknownStatement`), so a new
migration cannot be applied to a cluster as if it were one node.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from funnelstream.clickhouse import SCHEMA_MIGRATIONS_SQL, migration_files, split_statements

# Per table: the Distributed table's sharding expression (columns of its ORDER BY).
SHARDING: dict[str, str] = {
    "schema_migrations": "number",
    "events": "cityHash64(project_id, visitor_id)",
    "sessions": "cityHash64(project_id, visitor_id)",
    "funnel_state": "cityHash64(project_id, visitor_id)",
    "funnel_transitions": "cityHash64(project_id, visitor_id)",
    "funnel_transitions_by_time": "cityHash64(project_id, visitor_id)",
    "visitor_identities": "cityHash64(project_id, visitor_id)",
    "processor_state": "cityHash64(visitor_key)",
    "visitor_funnel_progress": "cityHash64(visitor_key)",
    "dead_letters": "cityHash64(source, log_partition, log_offset)",
    "funnels": "cityHash64(project_id, funnel_id)",
    "funnel_versions": "cityHash64(project_id, funnel_id)",
    "funnel_backfills": "cityHash64(consumer_group, log_partition, project_id, funnel_id)",
    "funnel_backfill_progress": "cityHash64(consumer_group, log_partition, project_id, funnel_id)",
    "api_keys": "cityHash64(key_id)",
}
DISTRIBUTED_SUFFIX = "_all"
# ZooKeeper/Keeper path of a table's replicas; {shard} and {replica} are each server's
# macros (deploy/k8s/clickhouse/README.md).
REPLICA_PATH = "'/clickhouse/tables/{{shard}}/{{database}}/{table}', '{{replica}}'"

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_CREATE_TABLE = re.compile(rf"^CREATE TABLE IF NOT EXISTS ({_NAME})\b(.*)$", re.S)
_ENGINE = re.compile(r"\bENGINE\s*=\s*(MergeTree|ReplacingMergeTree)(?:\(([^)]*)\))?")
_CREATE_VIEW = re.compile(rf"^CREATE MATERIALIZED VIEW IF NOT EXISTS ({_NAME})\b(.*)$", re.S)
_DROP_VIEW = re.compile(rf"^DROP VIEW IF EXISTS ({_NAME})$")
_ALTER = re.compile(rf"^ALTER TABLE ({_NAME}) (ADD COLUMN|ADD INDEX)\b(.*)$", re.S)
_INSERT_SELECT = re.compile(rf"^INSERT INTO ({_NAME})\s+SELECT\b", re.S)
_NON_REPLICATED_WINDOW = re.compile(
    rf"^ALTER TABLE ({_NAME}) MODIFY SETTING non_replicated_deduplication_window\b"
)


class UnknownStatement(ValueError):
    """A migration statement this module cannot render for a cluster."""


# What a cluster name may hold: quoted into DDL, so nothing that could end the quote.
CLUSTER_NAME = r"[A-Za-z0-9_.-]+"


def _quote(cluster: str) -> str:
    if not re.fullmatch(CLUSTER_NAME, cluster):
        raise ValueError(f"not a cluster name: {cluster!r}")
    return f"'{cluster}'"


def render_statement(sql: str, cluster: str) -> list[str]:
    """One migration statement → the statements that do it on `cluster`."""
    on = f"ON CLUSTER {_quote(cluster)}"
    if match := _CREATE_TABLE.match(sql):
        table, rest = match.groups()
        if table not in SHARDING:
            raise UnknownStatement(f"no sharding key for table {table}")
        engine = _ENGINE.search(rest)
        if engine is None:
            raise UnknownStatement(f"{table}: an engine this module cannot replicate")
        kind, args = engine.groups()
        replicated_args = REPLICA_PATH.format(table=table) + (f", {args}" if args else "")
        rest = rest[: engine.start()] + (
            f"ENGINE = Replicated{kind}({replicated_args})" + rest[engine.end() :]
        )
        distributed = (
            f"CREATE TABLE IF NOT EXISTS {table}{DISTRIBUTED_SUFFIX} {on} AS {table}\n"
            f"ENGINE = Distributed({_quote(cluster)}, currentDatabase(), {table}, "
            f"{SHARDING[table]})"
        )
        return [f"CREATE TABLE IF NOT EXISTS {table} {on}{rest}", distributed]
    if match := _CREATE_VIEW.match(sql):
        # On every node: a view fires on inserts into its replica's source table, and
        # writes the replicated target, which reaches the other replicas.
        view, rest = match.groups()
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} {on}{rest}"]
    if match := _DROP_VIEW.match(sql):
        return [f"DROP VIEW IF EXISTS {match.group(1)} {on}"]
    if match := _ALTER.match(sql):
        table, command, rest = match.groups()
        out = [f"ALTER TABLE {table} {on} {command}{rest}"]
        if command == "ADD COLUMN":  # a Distributed table lists its columns too
            out.append(f"ALTER TABLE {table}{DISTRIBUTED_SUFFIX} {on} {command}{rest}")
        return out
    if _NON_REPLICATED_WINDOW.match(sql):
        # Replicated tables keep their inserts' deduplication tokens by themselves
        # (`replicated_deduplication_window`): the window plain MergeTree tables need for
        # the processor's tokens (0014_insert_deduplication.sql) has nothing to add.
        return []
    if _INSERT_SELECT.match(sql):
        # Data carried forward from an older schema: run once, on the node that applies
        # the migrations; the replicated target brings the rows to the other replicas.
        return [sql]
    raise UnknownStatement(f"cannot render for a cluster: {sql[:80]}")


def render(sql: str, cluster: str) -> list[str]:
    """A migration file → its statements for `cluster`."""
    return [
        out for statement in split_statements(sql) for out in render_statement(statement, cluster)
    ]


def statements_of(cluster: str) -> Callable[[str], list[str]]:
    """How `migrate` turns a migration file into statements: as written for one server
    (`cluster` empty), else rendered for the cluster."""
    return functools.partial(render, cluster=cluster) if cluster else split_statements


def render_all(cluster: str) -> list[str]:
    """Every migration, and the migrations table itself, for `cluster`, in order."""
    files = [SCHEMA_MIGRATIONS_SQL, *(sql for _, _, sql in migration_files())]
    return [statement for sql in files for statement in render(sql, cluster)]
