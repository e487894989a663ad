"""String literals built by funnelstream/sql_literals.py read back, through the real
engine, as the exact text: nothing in a value can end the literal or change the query."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnelstream.clickhouse import ClickHouse
from funnelstream.sql_literals import string_array, string_list, string_literal

pytestmark = pytest.mark.clickhouse

# Quotes, backslashes, escapes ClickHouse knows, braces of query parameters, NUL.
TRICKY = st.sampled_from(["'", "\\", "\\'", "''", "\\n", "\\x41", "{x:String}", "\0", "\n"])
TEXT = st.lists(st.one_of(TRICKY, st.text(max_size=8)), max_size=6).map("".join)


# The engine fixture holds no state between examples: these queries read no table.
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(values=st.lists(TEXT, min_size=1, max_size=5))
def test_any_text_round_trips(ch: ClickHouse, values: list[str]) -> None:
    rows = ch.query_rows_sync(f"SELECT arrayJoin({string_array(values)}) AS v")
    assert [r[0] for r in rows] == values
    (single,) = ch.query_rows_sync(f"SELECT {string_literal(values[0])}")
    assert single[0] == values[0]
    rows = ch.query_rows_sync(f"SELECT arrayJoin({string_list(values)})")
    assert [r[0] for r in rows] == values


def test_an_array_of_ids_is_read_as_uuids_by_in(ch: ClickHouse) -> None:
    ids = ["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"]
    (row,) = ch.query_rows_sync(f"SELECT toUUID('{ids[1]}') IN {string_array(ids)}")
    assert row[0] in (1, True)
