"""SQL literals for large value lists, built in C rather than per character.

clickhouse-connect formats a bound array parameter element by element and escapes each
string one character at a time, and the engine then parses every element of an array
literal: for the processor's dedupe lookup (thousands of visitor and event ids per poll)
both cost more than the lookup itself (2,000 ids: 32 ms against 14 ms as below). So a
list travels as one string literal holding a JSON array (`string_list`), which the engine
unpacks with JSONExtract; literals are quoted with `str.translate`. ClickHouse reads a
quoted string up to an unescaped quote, taking backslash escapes: escaping the backslash
and the quote leaves no way out of the literal (NUL is escaped too, for readable logs);
every other character stands for itself. tests/funnelstream/test_sql_literals.py
round-trips any text through the engine.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\0": "\\0"})


def string_literal(value: str) -> str:
    return "'" + value.translate(_ESCAPES) + "'"


def string_array(values: Iterable[str]) -> str:
    """An array literal of strings, e.g. for `column IN <array>`; ClickHouse converts
    the strings to the column's type (UUID, Date) when it builds the set."""
    return "[" + ",".join("'" + v.translate(_ESCAPES) + "'" for v in values) + "]"


def string_list(values: Iterable[str]) -> str:
    """An expression for an Array(String) of these values, for `column IN (SELECT
    arrayJoin(<expression>))`: one literal to parse, however many values (the primary
    key is used as with a literal array: `use_index_for_in_with_subqueries`)."""
    return f"JSONExtract({string_literal(orjson.dumps(list(values)).decode())}, 'Array(String)')"
