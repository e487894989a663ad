"""observe_many must leave a histogram exactly as observing each amount would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from funnelstream.metrics import observe_many

BUCKETS = (0.1, 0.5, 1.0, 2.0, 10.0)
amounts = st.lists(
    st.one_of(
        st.sampled_from(BUCKETS),  # on a bound: `le` is inclusive
        st.floats(allow_nan=False, min_value=-1e6, max_value=1e6),
        st.integers(min_value=-10, max_value=100).map(float),
    ),
    max_size=50,
)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _pair() -> tuple[Histogram, Histogram]:
    registry = CollectorRegistry()
    one = Histogram("one_by_one", "", buckets=BUCKETS, registry=registry)
    many = Histogram("all_at_once", "", buckets=BUCKETS, registry=registry)
    return one, many


@given(amounts, amounts)
def test_observe_many_equals_observe_each(first: list[float], second: list[float]) -> None:
    one, many = _pair()
    for batch in (first, second):
        for amount in batch:
            one.observe(amount)
        observe_many(many, batch)
    expected = {(n.replace("one_by_one", ""), le): v for (n, le), v in _samples(one).items()}
    got = {(n.replace("all_at_once", ""), le): v for (n, le), v in _samples(many).items()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-6), key


def test_nan_goes_to_the_sum_only_as_observe_does() -> None:
    one, many = _pair()
    one.observe(float("nan"))
    observe_many(many, [float("nan")])
    assert _samples(many)[("all_at_once_count", "")] == _samples(one)[("one_by_one_count", "")]
