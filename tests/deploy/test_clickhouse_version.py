"""The ClickHouse server version our SQL needs, checked: every statement we ship or send
(tests/deploy/sql_corpus.py) is parsed by the engine (`EXPLAIN AST`), each function, table
engine, index type, data type, statement kind and ALTER command it names is looked up in
deploy/clickhouse/functions.tsv with the version that introduced it, and the newest of
those is the minimum server version: written in docs/operations.md, and no newer than the
image docker-compose.yml pins.

The table is checked against the embedded engine's own `system.functions.introduced_in`
wherever the engine knows one; rows it does not know (engines, types, index types, a few
aggregates) say where their version comes from. `UPDATE_CLICKHOUSE_FUNCTIONS=1` rewrites
the table's rows that the engine can date and adds the names it cannot as `?`, to fill by
hand.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from funnelstream.clickhouse import ClickHouse
from tests.deploy import sql_corpus
from tests.fixtures.clickhouse import truncate_all

pytestmark = pytest.mark.clickhouse

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "deploy" / "clickhouse" / "functions.tsv"
OPERATIONS = ROOT / "docs" / "operations.md"
COMPOSE = ROOT / "docker-compose.yml"
UPDATE = os.environ.get("UPDATE_CLICKHOUSE_FUNCTIONS") == "1"

# Aggregate function combinators (ClickHouse docs, "Aggregate Function Combinators"),
# longest first so `MergeState` is not read as `State`.
COMBINATORS = (
    "SimpleState",
    "MergeState",
    "OrDefault",
    "Distinct",
    "Resample",
    "ForEach",
    "ArgMin",
    "ArgMax",
    "OrNull",
    "Array",
    "State",
    "Merge",
    "Map",
    "If",
)
DATED = re.compile(r"\d+\.\d+(\.\d+)*")
# What the parser prints that a server version can lack: functions (table engines and
# index types print as functions too), data types, statement kinds, ALTER commands.
_NODE = re.compile(r"^\s*(?:Function|DataType|EnumDataType)\s+(\w+)")
_STATEMENT = re.compile(r"^(\w+Query)\b")  # the statement itself, not its subqueries
_ALTER = re.compile(r"^\s*AlterCommand\s+(\w+)")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def read_table() -> dict[str, dict[str, str]]:
    with TABLE.open() as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        return {row["name"]: row for row in rows}


@pytest.fixture(scope="module")
def engine(clickhouse_engine: ClickHouse) -> ClickHouse:
    return clickhouse_engine


@pytest.fixture(scope="module")
def corpus(
    engine: ClickHouse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[sql_corpus.Statement]]:
    truncate_all(engine)
    with pytest.MonkeyPatch.context() as monkeypatch:
        ran = sql_corpus.app_statements(tmp_path_factory.mktemp("app"), engine, monkeypatch)
    truncate_all(engine)
    yield [
        *sql_corpus.migration_statements(),
        *sql_corpus.retention_statements(),
        *sql_corpus.builder_statements(),
        *ran,
    ]


class Resolver:
    """A name as the parser prints it → the names to date: the function itself (its
    case-insensitive spelling resolved) and any aggregate combinators on it."""

    def __init__(self, engine: ClickHouse, table: dict[str, dict[str, str]]) -> None:
        rows = engine.query_rows_sync(
            "SELECT name, case_insensitive, introduced_in FROM system.functions"
        )
        self.functions = {str(n) for n, _, _ in rows}
        self.folded = {str(n).lower(): str(n) for n, ci, _ in rows if ci}
        self.introduced = {str(n): str(v) for n, _, v in rows if v}
        self.table = table

    def resolve(self, name: str) -> list[str]:
        if name in self.table or name in self.functions:
            return [name]
        if name.lower() in self.folded:
            return [self.folded[name.lower()]]
        for suffix in COMBINATORS:
            if name.endswith(suffix) and len(name) > len(suffix):
                return [*self.resolve(name[: -len(suffix)]), suffix]
        return [name]  # unknown: reported as missing from the table


def names_in(engine: ClickHouse, statement: sql_corpus.Statement) -> set[str]:
    sql, parameters = statement
    lines = engine.query_rows_sync("EXPLAIN AST " + sql, parameters)
    names = set()
    for (line,) in lines:
        if m := _NODE.match(str(line)) or _STATEMENT.match(str(line)):
            names.add(m.group(1))
        elif m := _ALTER.match(str(line)):
            names.add(f"ALTER {m.group(1)}")
    return names


@pytest.fixture(scope="module")
def used(engine: ClickHouse, corpus: list[sql_corpus.Statement]) -> dict[str, str]:
    """Each dated name our SQL uses → one statement using it (for the failure message)."""
    resolver = Resolver(engine, read_table() if TABLE.exists() else {})
    out: dict[str, str] = {}
    for statement in corpus:
        for raw in names_in(engine, statement):
            for name in resolver.resolve(raw):
                out.setdefault(name, statement[0])
    if UPDATE:
        _rewrite_table(set(out), resolver)
    return out


def _rewrite_table(names: set[str], resolver: Resolver) -> None:
    old = read_table() if TABLE.exists() else {}
    header = [line for line in TABLE.read_text().splitlines() if line.startswith("#")]
    rows = []
    for name in sorted(names, key=str.lower):
        if name in old and old[name]["source"] != "system.functions":
            r = old[name]  # dated by hand, with its reason
            rows.append((name, r["kind"], r["introduced_in"], r["source"]))
        elif name in resolver.introduced:
            kind = "combinator" if name in COMBINATORS else "function"
            rows.append((name, kind, resolver.introduced[name], "system.functions"))
        elif name in old:
            r = old[name]
            rows.append((name, r["kind"], r["introduced_in"], r["source"]))
        else:
            rows.append((name, "?", "?", "?"))
    lines = [*header, "name\tkind\tintroduced_in\tsource", *("\t".join(r) for r in rows)]
    TABLE.write_text("\n".join(lines) + "\n")


def minimum(used: dict[str, str], table: dict[str, dict[str, str]]) -> str:
    newest = max(used, key=lambda n: version_tuple(table[n]["introduced_in"]))
    return ".".join(table[newest]["introduced_in"].split(".")[:2])


def compose_pin() -> str:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    image = str(services["clickhouse"]["image"])
    repository, _, tag = image.partition(":")
    assert repository == "clickhouse/clickhouse-server", image
    assert re.fullmatch(r"\d+\.\d+(\.\d+)*", tag), f"pin an exact version, not {tag!r}"
    return tag


def test_the_corpus_reaches_every_kind_of_statement(corpus: list[sql_corpus.Statement]) -> None:
    text = "\n".join(sql for sql, _ in corpus)
    # The run went through the processor, its dedupe and re-folds, backfills, erasures,
    # the stores and every report builder.
    for needle in (
        "windowFunnel",
        "FROM events FINAL",
        "funnel_backfill_progress",
        "processor_state",
        "visitor_identities",
        "ALTER TABLE",
        "api_keys",
        "funnel_versions",
        "MODIFY TTL",
        "ReplacingMergeTree",
    ):
        assert needle in text, needle
    assert len(corpus) > 150


def check(used: dict[str, str], table: dict[str, dict[str, str]], pin: str) -> list[str]:
    """What stops our SQL from running on ClickHouse `pin`: names the table does not
    date, or dates after it."""
    problems = []
    for name in sorted(used):
        row = table.get(name)
        if row is None:
            problems.append(f"{name}: not in {TABLE.name}, in: {used[name][:200]}")
        elif not DATED.fullmatch(row["introduced_in"]):
            problems.append(f"{name}: not dated in {TABLE.name}")
        elif version_tuple(row["introduced_in"]) > version_tuple(pin):
            problems.append(f"{name}: introduced in {row['introduced_in']}, after {pin}")
    return problems


def test_every_name_our_sql_uses_runs_on_the_pinned_server(used: dict[str, str]) -> None:
    assert check(used, read_table(), compose_pin()) == []


def test_the_check_fails_on_an_unknown_or_too_new_function(engine: ClickHouse) -> None:
    statement = ("SELECT arrayFold((acc, x) -> acc + x, [1, 2], 0), mysteryFn(1)", {})
    table = read_table()
    resolver = Resolver(engine, table)
    used = {n: statement[0] for raw in names_in(engine, statement) for n in resolver.resolve(raw)}
    problems = check(used, table, "23.8")
    assert [p.split(":")[0] for p in problems] == ["arrayFold", "mysteryFn"], problems


def test_the_table_agrees_with_the_engine_and_holds_only_what_we_use(
    engine: ClickHouse, used: dict[str, str]
) -> None:
    table = read_table()
    resolver = Resolver(engine, table)
    for name, row in table.items():
        known = resolver.introduced.get(name)
        if known is None:
            assert row["source"] != "system.functions", name
            continue
        # Later than the engine says only with the reason written down.
        assert version_tuple(row["introduced_in"]) >= version_tuple(known), (name, known)
        if row["introduced_in"] != known:
            assert row["source"] != "system.functions", (name, known)
    unused = sorted(set(table) - set(used))
    assert not unused, f"no statement uses these any more; remove them: {unused}"


def test_the_docs_state_the_minimum_version(used: dict[str, str]) -> None:
    needed = minimum(used, read_table())
    stated = re.search(
        r"minimum ClickHouse server version is \*\*(\d+\.\d+)\*\*", OPERATIONS.read_text()
    )
    assert stated, "docs/operations.md must state the minimum ClickHouse server version"
    assert stated.group(1) == needed, f"our SQL needs {needed}; the docs say {stated.group(1)}"
