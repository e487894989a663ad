"""ClickHouse errors are classified once, at the client boundary, from real engine errors:
transient ones (retry later) apart from errors in the statement (retrying cannot help)."""

from __future__ import annotations

import socket

import pytest

from funnelstream.clickhouse import (
    ClickHouse,
    ClickHouseQueryError,
    ClickHouseUnavailable,
    error_code,
)

pytestmark = pytest.mark.clickhouse


def query_error(ch: ClickHouse, sql: str) -> ClickHouseQueryError:
    with pytest.raises(ClickHouseQueryError) as caught:
        ch.query_rows_sync(sql)
    return caught.value


def test_a_syntax_error_is_a_query_error_with_code_and_sql(ch: ClickHouse) -> None:
    err = query_error(ch, "SELEC 1")
    assert err.code == 62  # SYNTAX_ERROR
    assert "Syntax error" in err.message
    assert err.sql == "SELEC 1"


def test_a_bad_argument_is_a_query_error(ch: ClickHouse) -> None:
    assert query_error(ch, "SELECT 1 + 'a'").code == 43  # ILLEGAL_TYPE_OF_ARGUMENT
    assert query_error(ch, "SELECT intDiv(1, 0)").code == 153  # ILLEGAL_DIVISION
    assert query_error(ch, "SELECT no_such_column").code == 47  # UNKNOWN_IDENTIFIER
    # Python's re takes lookarounds; ClickHouse's RE2 does not.
    assert query_error(ch, "SELECT match('a', '(?=a)')").code == 427  # CANNOT_COMPILE_REGEXP


def test_a_write_to_a_missing_table_is_a_query_error(ch: ClickHouse) -> None:
    with pytest.raises(ClickHouseQueryError) as caught:
        ch.insert_sync("no_such_table", [(1,)], ["a"])
    assert caught.value.code == 60  # UNKNOWN_TABLE
    assert caught.value.sql == "INSERT INTO no_such_table"


def test_a_value_the_column_cannot_take_is_a_query_error(ch: ClickHouse) -> None:
    # Refused by the client while encoding the block: sending it again fails again.
    with pytest.raises(ClickHouseQueryError) as caught:
        ch.insert_sync("schema_migrations", [("not a number", "x")], ["number", "name"])
    assert caught.value.code is None


def test_an_exhausted_memory_limit_is_transient(ch: ClickHouse) -> None:
    with pytest.raises(ClickHouseUnavailable) as caught:
        ch.query_rows_sync(
            "SELECT groupArray(number) FROM numbers(1000000) SETTINGS max_memory_usage = 100000"
        )
    assert error_code(caught.value.__cause__ or caught.value) == 241  # MEMORY_LIMIT_EXCEEDED


def test_the_code_is_read_from_a_raw_chdb_error(ch: ClickHouse) -> None:
    err = query_error(ch, "SELEC 1")
    # The driver wraps chdb's own exception, which carries the code only in its text.
    raw = err.__cause__.__cause__ if err.__cause__ is not None else None
    assert raw is not None and type(raw).__module__.startswith("chdb"), type(raw)
    assert "Code: 62." in str(raw)
    assert error_code(raw) == 62


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now: the client's first request is refused.
    with pytest.raises(ClickHouseUnavailable):
        ClickHouse(f"http://127.0.0.1:{port}")
