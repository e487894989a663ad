"""Step matching: every filter op, missing properties, numbers as ClickHouse parses them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from funnel.match import (
    StepIndex,
    compile_steps,
    filter_matches,
    matching_steps,
    step_matches,
)
from schemas.funnels import FunnelStep, PropertyFilter
from schemas.properties import flatten, flatten_value


def f(op: str, value: Any = None, prop: str = "k") -> PropertyFilter:
    return PropertyFilter.model_validate({"property": prop, "op": op, "value": value})


# (filter, properties, expected)
CASES = [
    # eq / neq compare flattened strings; a missing property reads as ''.
    (f("eq", "a"), {"k": "a"}, True),
    (f("eq", "a"), {"k": "A"}, False),
    (f("eq", "a"), {}, False),
    (f("eq", ""), {}, True),
    (f("eq", 12), {"k": "12"}, True),
    (f("eq", 12.0), {"k": "12"}, True),
    (f("eq", 12.5), {"k": "12.5"}, True),
    (f("eq", True), {"k": "true"}, True),
    (f("eq", True), {"k": "True"}, False),
    (f("neq", "a"), {"k": "b"}, True),
    (f("neq", "a"), {"k": "a"}, False),
    (f("neq", "a"), {}, True),
    # in / not_in
    (f("in", ["a", 2, False]), {"k": "2"}, True),
    (f("in", ["a", 2, False]), {"k": "false"}, True),
    (f("in", ["a", 2]), {"k": "b"}, False),
    (f("in", ["a"]), {}, False),
    (f("in", ["a", ""]), {}, True),
    (f("not_in", ["a", "b"]), {"k": "c"}, True),
    (f("not_in", ["a", "b"]), {"k": "a"}, False),
    (f("not_in", ["a"]), {}, True),
    # contains is a substring test, case-sensitive
    (f("contains", "ell"), {"k": "hello"}, True),
    (f("contains", "ELL"), {"k": "hello"}, False),
    (f("contains", "x"), {}, False),
    (f("contains", 1), {"k": "a1b"}, True),
    # regex searches (unanchored) like ClickHouse match()
    (f("regex", "^/prod/[0-9]+$"), {"k": "/prod/12"}, True),
    (f("regex", "^/prod/[0-9]+$"), {"k": "/prod/x"}, False),
    (f("regex", "od"), {"k": "/prod/x"}, True),
    (f("regex", "^$"), {}, True),
    (f("regex", "."), {}, False),
    # is_set / is_not_set tell a missing property from an empty one
    (f("is_set"), {"k": ""}, True),
    (f("is_set"), {}, False),
    (f("is_not_set"), {}, True),
    (f("is_not_set"), {"k": ""}, False),
    # gt / lt parse the stored string as a number; unparseable or missing never matches
    (f("gt", 10), {"k": "10.5"}, True),
    (f("gt", 10), {"k": "10"}, False),
    (f("lt", 10), {"k": "9.99"}, True),
    (f("lt", 10), {"k": "10"}, False),
    (f("gt", -1), {"k": "-0.5"}, True),
    (f("gt", 10), {"k": "1e3"}, True),
    (f("lt", 0), {"k": "-.5"}, True),
    (f("gt", 0), {"k": "+5"}, True),
    (f("gt", 1e300), {"k": "inf"}, True),
    (f("lt", 0), {"k": "-Infinity"}, True),
    (f("gt", 0), {"k": "nan"}, False),
    (f("lt", 0), {"k": "nan"}, False),
    (f("gt", 0), {"k": "abc"}, False),
    (f("lt", 0), {"k": "abc"}, False),
    (f("lt", 10), {"k": ""}, False),
    (f("lt", 10), {}, False),
    (f("gt", 0), {"k": "0x10"}, False),
    (f("gt", 0), {"k": "1,5"}, False),
    # Python's float() accepts these, ClickHouse's toFloat64OrNull does not: no match.
    (f("gt", 0), {"k": " 12"}, False),
    (f("gt", 0), {"k": "12 "}, False),
    (f("gt", 0), {"k": "1_000"}, False),
    (f("gt", 0), {"k": "\u0661\u0662"}, False),  # Arabic-Indic digits
]


@pytest.mark.parametrize(("flt", "props", "expected"), CASES)
def test_filter(flt: PropertyFilter, props: dict[str, str], expected: bool) -> None:
    assert filter_matches(flt, props) is expected


def test_step_needs_the_event_name_and_every_filter() -> None:
    step = FunnelStep.model_validate(
        {
            "event": "purchase",
            "filters": [
                {"property": "plan", "value": "pro"},
                {"property": "amount", "op": "gt", "value": 100},
            ],
        }
    )
    assert step_matches(step, "purchase", {"plan": "pro", "amount": "150"})
    assert not step_matches(step, "purchase", {"plan": "pro", "amount": "50"})
    assert not step_matches(step, "purchase", {"plan": "free", "amount": "150"})
    assert not step_matches(step, "refund", {"plan": "pro", "amount": "150"})


def test_any_of_step_matches_any_alternative() -> None:
    step = FunnelStep.model_validate(
        {
            "any_of": [
                {"event": "signup", "filters": [{"property": "via", "value": "google"}]},
                {"event": "login"},
            ]
        }
    )
    assert step_matches(step, "signup", {"via": "google"})
    assert not step_matches(step, "signup", {"via": "email"})
    assert step_matches(step, "login", {})
    assert not step_matches(step, "logout", {})


def test_matching_steps_lists_every_step_an_event_matches() -> None:
    steps = tuple(
        FunnelStep.model_validate(s)
        for s in [
            {"event": "view"},
            {"event": "view", "filters": [{"property": "page", "value": "/pricing"}]},
            {"event": "buy"},
        ]
    )
    assert matching_steps(steps, "view", {"page": "/pricing"}) == [0, 1]
    assert matching_steps(steps, "view", {"page": "/"}) == [0]
    assert matching_steps(steps, "buy", {}) == [2]
    assert matching_steps(steps, "other", {}) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x", "x"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (None, ""),
        (0, "0"),
        (-7, "-7"),
        (12.0, "12"),
        (12.5, "12.5"),
        (0.1, "0.1"),
        (1e20, "100000000000000000000"),
        ([1, "a"], '[1,"a"]'),
        ({"a": 1}, '{"a":1}'),
    ],
)
def test_flatten_value(value: Any, text: str) -> None:
    assert flatten_value(value) == text


def test_flatten_nests_to_dotted_keys_up_to_max_depth() -> None:
    props = {
        "a": 1,
        "product": {"id": 7, "tags": ["x"], "price": 9.5},
        "d1": {"d2": {"d3": {"d4": {"d5": 1}}}},
        "empty": {},
    }
    assert flatten(props) == {
        "a": "1",
        "product.id": "7",
        "product.tags": '["x"]',
        "product.price": "9.5",
        "d1.d2.d3.d4": '{"d5":1}',
    }


def test_flattened_values_match_filters_on_them() -> None:
    props = flatten({"cart": {"total": 120, "coupon": None}, "vip": True})
    assert filter_matches(f("gt", 100, "cart.total"), props)
    assert filter_matches(f("eq", True, "vip"), props)
    assert filter_matches(f("is_set", None, "cart.coupon"), props)
    assert filter_matches(f("eq", "", "cart.coupon"), props)


def unchecked(op: str, value: Any) -> PropertyFilter:
    """A filter that never met validation, as an old stored definition might hold."""
    return PropertyFilter.model_construct(property="k", op=op, value=value)


@pytest.mark.parametrize(
    "flt",
    [
        unchecked("gt", 10**400),  # float() overflows
        unchecked("lt", float("nan")),
        unchecked("gt", float("inf")),
        unchecked("gt", "10"),
        unchecked("regex", "(a)\\1"),  # RE2 refuses backreferences
        unchecked("regex", "\ud800"),
        unchecked("in", "not a list"),
    ],
)
def test_a_filter_validation_refuses_matches_nothing_and_never_raises(
    flt: PropertyFilter,
) -> None:
    index = StepIndex(
        compile_steps([FunnelStep.model_construct(event="e", filters=(flt,), any_of=())])
    )
    for props in ({"k": "12"}, {"k": "aa"}, {"k": "n"}, {}):
        assert index.match("e", props) == []


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("a.b", "a\nb", True),  # ClickHouse's match() sets dot_nl
        ("^b", "a\nb", False),  # ^ and $ anchor the whole text, not lines
        ("a$", "a\nb", False),
        ("(?m)^b", "a\nb", True),
        ("B", "abc", False),
        ("(?i)B", "abc", True),
        ("b", "abc", True),  # a search, unanchored
        ("^\\p{Greek}+$", "αβγ", True),
        ("^.$", "\U0001f600", True),  # one character, four UTF-8 bytes
        ("", "anything", True),
    ],
)
def test_regex_has_clickhouse_match_semantics(pattern: str, text: str, expected: bool) -> None:
    assert filter_matches(f("regex", pattern), {"k": text}) is expected


def test_catastrophic_pattern_is_linear() -> None:
    text = "a" * 100_000 + "!"
    start = time.perf_counter()
    assert not filter_matches(f("regex", "(a+)+$"), {"k": text[:-1] + "b!"})
    assert filter_matches(f("regex", "(a+)+!$"), {"k": text})
    assert time.perf_counter() - start < 1.0


def test_a_huge_list_is_built_once_per_definition() -> None:
    # Far beyond the saved limit, to show the per-event cost is a lookup, not a rebuild.
    members = [str(i) for i in range(500_000)]
    step = FunnelStep.model_construct(event="e", filters=(unchecked("in", members),), any_of=())
    index = StepIndex(compile_steps([step]))
    start = time.perf_counter()
    hits = sum(bool(index.match("e", {"k": str(i * 97)})) for i in range(20_000))
    assert hits == sum(i * 97 < 500_000 for i in range(20_000))
    assert time.perf_counter() - start < 1.0
