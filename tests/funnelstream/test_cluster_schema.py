"""Our migrations rendered for a ClickHouse cluster (funnelstream/cluster_schema.py),
parsed by the real engine: the embedded engine has no cluster to run `ON CLUSTER` DDL on,
but its parser and formatter are the server's, so each statement is checked to parse and
to keep its cluster, replicated engine and Distributed table."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from funnelstream.cli import main
from funnelstream.clickhouse import SCHEMA_MIGRATIONS_SQL, ClickHouse, migration_files
from funnelstream.cluster_schema import (
    DISTRIBUTED_SUFFIX,
    SHARDING,
    UnknownStatement,
    render,
    render_all,
)
from funnelstream.config import IngestSettings

pytestmark = pytest.mark.clickhouse

CLUSTER = "funnelstream"


def formatted(ch: ClickHouse, sql: str) -> str:
    """The statement as the engine's parser reads it (an error if it does not parse)."""
    ((text,),) = ch.query_rows_sync("SELECT formatQuery({q:String})", {"q": sql})
    return str(text)


def test_every_rendered_statement_parses_and_runs_on_the_cluster(ch: ClickHouse) -> None:
    statements = render_all(CLUSTER)
    replicated, distributed = set(), set()
    for sql in statements:
        text = formatted(ch, sql)
        if text.startswith("INSERT"):
            continue  # data carried forward: runs once, on one node
        assert f"ON CLUSTER {CLUSTER}" in text, text[:200]
        if m := re.match(r"CREATE TABLE IF NOT EXISTS (\w+) ON CLUSTER \S+\n?\s*(?:AS|\()", text):
            table = m.group(1)
            if "ENGINE = Distributed(" in text:
                distributed.add(table)
                base = table.removesuffix(DISTRIBUTED_SUFFIX)
                assert f"Distributed('{CLUSTER}', currentDatabase(), {base}, " in text
            else:
                assert re.search(r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/", text)
                replicated.add(table)
    # Every table of ours, and only those, replicated with a Distributed table over it.
    assert replicated == set(SHARDING)
    assert distributed == {t + DISTRIBUTED_SUFFIX for t in SHARDING}
    assert not any(re.search(r"ENGINE = (Replacing)?MergeTree\b", s) for s in statements)


def test_replicated_engines_keep_their_arguments(ch: ClickHouse) -> None:
    sessions = next(
        s for s in render_all(CLUSTER) if s.startswith("CREATE TABLE IF NOT EXISTS sessions ")
    )
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/sessions', "
        "'{replica}', version, is_deleted)"
    ) in formatted(ch, sessions)


def test_sharding_keeps_a_replacing_key_on_one_shard(ch: ClickHouse) -> None:
    """A sharding key made of the table's sorting-key columns sends every version of a row
    to the same shard, where FINAL collapses them (checked on the single-node tables)."""
    keys = dict(
        ch.query_rows_sync(
            "SELECT name, sorting_key FROM system.tables WHERE database = currentDatabase()"
        )
    )
    for table, expression in SHARDING.items():
        columns = set(re.findall(r"\w+", expression)) - {"cityHash64"}
        sorting = {c.strip() for c in str(keys[table]).split(",")}
        assert columns <= sorting, (table, columns, sorting)


def test_adding_a_column_reaches_the_distributed_table_too() -> None:
    out = render("ALTER TABLE sessions ADD COLUMN IF NOT EXISTS x String", CLUSTER)
    assert out == [
        f"ALTER TABLE sessions ON CLUSTER '{CLUSTER}' ADD COLUMN IF NOT EXISTS x String",
        f"ALTER TABLE sessions_all ON CLUSTER '{CLUSTER}' ADD COLUMN IF NOT EXISTS x String",
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE events DROP COLUMN context",  # a command not rendered yet
        "CREATE TABLE IF NOT EXISTS brand_new (a String) ENGINE = MergeTree ORDER BY a",
        "CREATE TABLE IF NOT EXISTS events (a String) ENGINE = Memory",
        "OPTIMIZE TABLE events FINAL",
    ],
)
def test_a_statement_it_cannot_render_is_refused(sql: str) -> None:
    with pytest.raises(UnknownStatement):
        render(sql, CLUSTER)


def test_a_cluster_name_cannot_inject_sql() -> None:
    with pytest.raises(ValueError):
        render(migration_files()[0][2], "c' ; DROP TABLE events; --")
    with pytest.raises(ValidationError):  # refused at start, as a setting
        IngestSettings(clickhouse_cluster="c' ; DROP TABLE events; --")


def test_the_cli_prints_the_clusters_ddl(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI writes its flags into the environment; this puts it back afterwards.
    monkeypatch.setenv("FUNNELSTREAM_CLICKHOUSE_CLUSTER", "")
    assert main(["migrate", "--print"]) == 2
    assert main(["migrate", "--cluster", CLUSTER, "--print"]) == 0
    printed = [s for s in capsys.readouterr().out.split(";\n\n") if s.strip()]
    assert printed == render_all(CLUSTER)


@settings(max_examples=20, deadline=None)
@given(cluster=st.from_regex(r"[A-Za-z0-9_.-]{1,24}", fullmatch=True))
def test_any_accepted_cluster_name_renders_statements_the_engine_parses(
    clickhouse_engine: ClickHouse, cluster: str
) -> None:
    """The name pattern the renderer (and the setting) accepts is one the parser takes."""
    statements = [
        *render(SCHEMA_MIGRATIONS_SQL, cluster),
        *render("ALTER TABLE sessions ADD COLUMN IF NOT EXISTS x String", cluster),
    ]
    for sql in statements:
        assert cluster in formatted(clickhouse_engine, sql)
