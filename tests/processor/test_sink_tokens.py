"""The batch write's deduplication tokens: the same batch gets the same token (a retry,
a replay after a restart), any other batch another; the engine drops a block whose token
it has taken already (migration 0014 gives plain MergeTree tables the window)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from funnelstream.clickhouse import ClickHouse
from processor.batch import Batch
from processor.sink import batch_token


def batch(spans: dict[int, tuple[int, int]], ids: list[str]) -> Batch:
    b = Batch()
    for partition, (first, end) in spans.items():
        for offset in range(first, end):
            b.count(partition, offset)
    b.outputs.events.extend(("p", i) for i in ids)  # type: ignore[arg-type]
    return b


spans = st.dictionaries(
    st.integers(0, 3),
    st.tuples(st.integers(0, 50), st.integers(1, 5)).map(lambda t: (t[0], t[0] + t[1])),
    min_size=1,
)
ids = st.lists(st.uuids().map(str), max_size=4)


@given(spans, ids, spans, ids)
def test_same_batch_same_token_other_batch_other_token(
    a: dict[int, tuple[int, int]], ids_a: list[str], b: dict[int, tuple[int, int]], ids_b: list[str]
) -> None:
    """The token names the span per partition, the number of events and the first and
    last event ids: equal exactly when those are."""

    def named(span: dict[int, tuple[int, int]], ids: list[str]) -> object:
        return (span, len(ids), ids[:1], ids[-1:])

    token_a = batch_token("g", batch(a, ids_a))
    assert token_a == batch_token("g", batch(a, ids_a))
    assert (token_a == batch_token("g", batch(b, ids_b))) == (named(a, ids_a) == named(b, ids_b))
    assert token_a != batch_token("h", batch(a, ids_a))


def test_a_log_started_over_does_not_reuse_a_token() -> None:
    """Offsets from 0 again (a new log, the same ClickHouse): other events, other token."""
    assert batch_token("g", batch({0: (0, 2)}, ["a", "b"])) != batch_token(
        "g", batch({0: (0, 2)}, ["c", "d"])
    )


def test_a_log_started_over_with_dead_letters_only_does_not_reuse_a_token() -> None:
    """A batch of undecodable messages has no event ids: its payloads name it, so a new
    log's dead letters at the old offsets are written, not dropped as the old ones."""

    def dead_only(payloads: list[str]) -> Batch:
        b = batch({0: (0, len(payloads))}, [])
        b.dead_letters.extend(
            (0, "processor", "invalid_json", "", 0, i, p, "") for i, p in enumerate(payloads)
        )
        return b

    assert batch_token("g", dead_only(["{", "x"])) == batch_token("g", dead_only(["{", "x"]))
    assert batch_token("g", dead_only(["{", "x"])) != batch_token("g", dead_only(["[", "y"]))


@pytest.mark.clickhouse
def test_the_engine_drops_a_block_under_a_token_it_has_taken(ch: ClickHouse) -> None:
    columns = ["consumer_group", "log_partition", "visitor_key", "state", "applied_offset"]
    ch.insert_sync("processor_state", [("g", 0, "v", "{}", 1)], columns, "t/1")
    # A retry whose rows differ (a re-read found more) is still the same write: dropped.
    ch.insert_sync("processor_state", [("g", 0, "w", "{}", 2)], columns, "t/1")
    ch.insert_sync("processor_state", [("g", 0, "x", "{}", 3)], columns, "t/2")
    keys = ch.query_rows_sync("SELECT visitor_key FROM processor_state ORDER BY visitor_key")
    assert keys == [("v",), ("x",)]
