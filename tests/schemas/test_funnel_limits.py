"""Hostile definitions are refused with a stable code and the field: the number domain,
RE2 patterns, size limits and text that cannot be stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from schemas.filter_values import NUMBER_LIMIT, number_bound, number_problem
from schemas.funnels import (
    MAX_ANY_OF,
    MAX_DEFINITION_BYTES,
    MAX_EXCLUSIONS,
    MAX_FILTERS,
    MAX_FUNNEL_LIST_VALUES,
    MAX_LABEL_CHARS,
    MAX_LIST_VALUES,
    MAX_REGEX_CHARS,
    MAX_VALUE_CHARS,
    FunnelDefinition,
    validate_funnel,
)


def problems(steps: list[dict[str, Any]] | None = None, **extra: Any) -> list[tuple[str, str]]:
    doc: dict[str, Any] = {
        "id": "f",
        "project": "p",
        "steps": steps or [{"event": "view"}, {"event": "buy"}],
        **extra,
    }
    return [(e.code, e.field) for e in validate_funnel(FunnelDefinition.model_validate(doc))]


def with_filter(op: str, value: Any) -> list[tuple[str, str]]:
    step = {"event": "buy", "filters": [{"property": "k", "op": op, "value": value}]}
    return problems([{"event": "view"}, step])


FIELD = "steps[1].filters[0].value"


@pytest.mark.parametrize(
    "value", [0, 1, -1, 0.5, -2.5, NUMBER_LIMIT, -NUMBER_LIMIT, float(NUMBER_LIMIT), 5e-324]
)
@pytest.mark.parametrize("op", ["gt", "lt"])
def test_numbers_inside_the_domain_are_accepted(op: str, value: float) -> None:
    assert with_filter(op, value) == []


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        NUMBER_LIMIT + 1,
        -NUMBER_LIMIT - 1,
        10**400,  # float() of it overflows
        1e300,
    ],
)
@pytest.mark.parametrize("op", ["gt", "lt"])
def test_numbers_outside_the_domain_are_refused(op: str, value: float) -> None:
    assert with_filter(op, value) == [("number_out_of_range", FIELD)]


@given(st.integers(min_value=-(2**80), max_value=2**80))
def test_an_integer_is_accepted_exactly_when_its_float_is_exact(value: int) -> None:
    accepted = number_problem(value) is None
    assert accepted == (abs(value) <= NUMBER_LIMIT)
    if accepted:
        bound = number_bound(value)
        assert bound is not None and int(bound) == value


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_float_is_accepted_when_finite_and_in_range(value: float) -> None:
    accepted = number_problem(value) is None
    assert accepted == (value == value and abs(value) <= NUMBER_LIMIT)


def test_number_bound_never_raises() -> None:
    assert number_bound(10**400) is None
    assert number_bound(float("nan")) is None
    assert number_bound(True) is None
    assert number_bound("10") is None
    assert number_bound(1e300) == 1e300


@pytest.mark.parametrize(
    ("op", "value"), [("eq", float("nan")), ("neq", float("inf")), ("in", ["a", float("-inf")])]
)
def test_nan_and_infinity_are_refused_in_every_filter(op: str, value: Any) -> None:
    assert with_filter(op, value) == [("number_out_of_range", FIELD)]


@pytest.mark.parametrize("pattern", ["", "(a+)+$", "(?i)x", r"\pL+", r"\bword\b", "a{1000}"])
def test_re2_patterns_are_accepted(pattern: str) -> None:
    assert with_filter("regex", pattern) == []


@pytest.mark.parametrize(
    "pattern", [r"(a)\1", "(?=a)", "(?!a)", "(?<=a)b", r"\Z", "a{1001}", "(", "*", "a**", r"\Qab"]
)
def test_patterns_re2_refuses_are_refused(pattern: str) -> None:
    assert with_filter("regex", pattern) == [("regex_invalid", FIELD)]


def test_regex_length_is_capped() -> None:
    assert with_filter("regex", "a" * MAX_REGEX_CHARS) == []
    assert with_filter("regex", "a" * (MAX_REGEX_CHARS + 1)) == [("regex_too_long", FIELD)]


def test_filters_per_step_alternative_and_exclusion() -> None:
    many = [{"property": f"p{i}", "op": "is_set"} for i in range(MAX_FILTERS + 1)]
    assert problems([{"event": "view"}, {"event": "buy", "filters": many[:-1]}]) == []
    assert problems([{"event": "view"}, {"event": "buy", "filters": many}]) == [
        ("filters_too_many", "steps[1].filters")
    ]
    alternatives = {"any_of": [{"event": "a"}, {"event": "b", "filters": many}]}
    assert problems([{"event": "view"}, alternatives]) == [
        ("filters_too_many", "steps[1].any_of[1].filters")
    ]
    assert problems(exclusions=[{"event": "x", "filters": many}]) == [
        ("filters_too_many", "exclusions[0].filters")
    ]


def test_alternatives_per_step() -> None:
    alternatives = [{"event": f"e{i}"} for i in range(MAX_ANY_OF + 1)]
    assert problems([{"event": "view"}, {"any_of": alternatives[:-1]}]) == []
    assert problems([{"event": "view"}, {"any_of": alternatives}]) == [
        ("any_of_too_many", "steps[1].any_of")
    ]


def test_exclusions_per_funnel() -> None:
    exclusions = [{"event": f"x{i}"} for i in range(MAX_EXCLUSIONS + 1)]
    assert problems(exclusions=exclusions[:-1]) == []
    assert problems(exclusions=exclusions) == [("exclusions_too_many", "exclusions")]


@pytest.mark.parametrize("op", ["in", "not_in"])
def test_list_sizes(op: str) -> None:
    assert with_filter(op, [str(i) for i in range(MAX_LIST_VALUES)]) == []
    assert with_filter(op, [str(i) for i in range(MAX_LIST_VALUES + 1)]) == [
        ("list_too_large", FIELD)
    ]
    assert with_filter(op, [1, [2]]) == [("filter_value_invalid", FIELD)]


def test_list_values_across_a_funnel() -> None:
    per_filter = MAX_LIST_VALUES
    # One-digit members: the count limit binds before the definition's size does.
    filters = [
        {"property": f"p{i}", "op": "in", "value": [i % 10] * per_filter}
        for i in range(MAX_FUNNEL_LIST_VALUES // per_filter + 1)
    ]
    assert problems([{"event": "view"}, {"event": "buy", "filters": filters}]) == [
        ("list_too_large", f"steps[1].filters[{len(filters) - 1}].value")
    ]


@pytest.mark.parametrize(("op", "wrap"), [("eq", False), ("contains", False), ("in", True)])
def test_value_length(op: str, wrap: bool) -> None:
    def value(n: int) -> Any:
        return ["x" * n] if wrap else "x" * n

    assert with_filter(op, value(MAX_VALUE_CHARS)) == []
    assert with_filter(op, value(MAX_VALUE_CHARS + 1)) == [("value_too_long", FIELD)]


def test_labels_are_capped_by_the_schema() -> None:
    assert problems(name="n" * MAX_LABEL_CHARS) == []
    with pytest.raises(ValueError, match="name"):
        problems(name="n" * (MAX_LABEL_CHARS + 1))


def test_text_that_cannot_be_stored_is_refused() -> None:
    lone = "\ud800"
    assert with_filter("eq", lone) == [("text_invalid", FIELD)]
    assert with_filter("in", ["a", lone]) == [("text_invalid", FIELD)]
    with pytest.raises(ValueError, match="unicode"):  # typed text: the schema refuses it
        problems([{"event": "view"}, {"event": "b" + lone}])
    assert with_filter("regex", lone) == [("regex_invalid", FIELD), ("text_invalid", FIELD)]


def test_a_definition_is_capped_as_a_whole() -> None:
    # Every member within its own limits; 64 long ones are too many bytes together.
    long = "x" * MAX_VALUE_CHARS
    assert with_filter("in", [long] * 60) == []
    assert with_filter("in", [long] * 64) == [("definition_too_large", "definition")]
    # Many lists of long values: no count limit is passed, the size is.
    filters = [{"property": f"p{i}", "op": "in", "value": [long] * 4} for i in range(16)]
    assert problems([{"event": "view"}, {"event": "buy", "filters": filters}]) == [
        ("definition_too_large", "definition")
    ]


# Members of any length up to the per-value limit, in characters of 1 to 4 UTF-8 bytes or
# that JSON escapes (6 bytes): sizes in bytes and in characters differ.
member = st.one_of(
    st.integers(-(10**6), 10**6),
    st.builds(
        lambda char, n: char * n,
        st.sampled_from(["x", "é", "€", "😀", "\u0001", '"']),
        st.integers(0, MAX_VALUE_CHARS),
    ),
)


@given(
    lists=st.lists(st.lists(member, max_size=80), min_size=1, max_size=8),
    name=st.text(max_size=MAX_LABEL_CHARS),
)
def test_an_accepted_definition_fits_in_a_request(lists: list[list[Any]], name: str) -> None:
    """The query API's body cap is at least MAX_DEFINITION_BYTES (funnelstream/config.py):
    whatever the validator accepts, its body as a client would send it fits."""
    filters = [{"property": f"p{i}", "op": "in", "value": v} for i, v in enumerate(lists)]
    body = {
        "id": "f",
        "name": name,
        "steps": [{"event": "view"}, {"event": "b", "filters": filters}],
    }
    funnel = FunnelDefinition.model_validate({**body, "project": "p"})
    sent = orjson.dumps(body)
    found = [(e.code, e.field) for e in validate_funnel(funnel)]
    event("accepted" if not found else "refused")
    if not found:
        assert len(sent) <= MAX_DEFINITION_BYTES
    if len(sent) > MAX_DEFINITION_BYTES:
        assert ("definition_too_large", "definition") in found
