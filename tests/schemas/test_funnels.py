"""Funnel validation: each rule's stable code, message and field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.funnels import (
    MAX_STEPS,
    MAX_WINDOW_SECONDS,
    RULES,
    FunnelDefinition,
    FunnelStep,
    validate_funnel,
)

TWO_STEPS = [{"event": "view"}, {"event": "buy"}]


def funnel(**overrides: Any) -> FunnelDefinition:
    doc: dict[str, Any] = {"id": "f", "project": "p", "steps": TWO_STEPS, **overrides}
    return FunnelDefinition.model_validate(doc)


def problems(**overrides: Any) -> list[tuple[str, str, str]]:
    return [(e.code, e.field, e.message) for e in validate_funnel(funnel(**overrides))]


def test_a_plain_funnel_is_valid() -> None:
    assert problems() == []


def test_rule_codes_are_stable_and_unique() -> None:
    assert [r.code for r in RULES] == [
        "steps_count",
        "window_out_of_range",
        "step_shape",
        "filter_value_invalid",
        "step_window_invalid",
        "optional_step_invalid",
        "exclusion_range_invalid",
        "exclusion_is_step",
        "option_not_supported",
        "filters_too_many",
        "any_of_too_many",
        "exclusions_too_many",
        "number_out_of_range",
        "list_too_large",
        "value_too_long",
        "regex_too_long",
        "regex_invalid",
        "text_invalid",
        "definition_too_large",
    ]


@pytest.mark.parametrize("count", [0, 1, MAX_STEPS + 1])
def test_step_count_out_of_range(count: int) -> None:
    steps = [{"event": f"e{i}"} for i in range(count)]
    assert problems(steps=steps) == [("steps_count", "steps", "a funnel needs 2 to 32 steps")]


@pytest.mark.parametrize("count", [2, MAX_STEPS])
def test_step_count_in_range(count: int) -> None:
    assert problems(steps=[{"event": f"e{i}"} for i in range(count)]) == []


@pytest.mark.parametrize("seconds", [0, -1, MAX_WINDOW_SECONDS + 1])
def test_window_out_of_range(seconds: int) -> None:
    assert problems(window_seconds=seconds) == [
        (
            "window_out_of_range",
            "window_seconds",
            f"window_seconds must be between 1 and {MAX_WINDOW_SECONDS} (90 days)",
        )
    ]


@pytest.mark.parametrize("seconds", [1, MAX_WINDOW_SECONDS])
def test_window_edges_are_valid(seconds: int) -> None:
    assert problems(window_seconds=seconds) == []


@pytest.mark.parametrize(
    ("step", "field", "message"),
    [
        ({}, "steps[1]", "a step needs either `event` or a non-empty `any_of`"),
        ({"any_of": []}, "steps[1]", "a step needs either `event` or a non-empty `any_of`"),
        (
            {"event": "buy", "any_of": [{"event": "pay"}]},
            "steps[1]",
            "a step needs either `event` or a non-empty `any_of`",
        ),
        (
            {"any_of": [{"event": "pay"}], "filters": [{"property": "a", "value": 1}]},
            "steps[1].filters",
            "with `any_of`, put filters on each alternative",
        ),
    ],
)
def test_step_shape(step: dict[str, Any], field: str, message: str) -> None:
    assert problems(steps=[{"event": "view"}, step]) == [("step_shape", field, message)]


def test_any_of_step_is_valid() -> None:
    assert problems(steps=[{"event": "view"}, {"any_of": [{"event": "a"}, {"event": "b"}]}]) == []


@pytest.mark.parametrize(
    ("op", "value", "message"),
    [
        ("is_set", "x", "is_set takes no value"),
        ("is_not_set", 0, "is_not_set takes no value"),
        ("in", "a", "in needs a non-empty list"),
        ("in", [], "in needs a non-empty list"),
        ("not_in", None, "not_in needs a non-empty list"),
        ("gt", "10", "gt needs a number"),
        ("lt", True, "lt needs a number"),
        ("regex", 5, "regex needs a string"),
        ("eq", None, "eq needs a string, number or boolean"),
        ("neq", [1], "neq needs a string, number or boolean"),
        ("contains", {"a": 1}, "contains needs a string, number or boolean"),
    ],
)
def test_filter_value_invalid(op: str, value: Any, message: str) -> None:
    step = {"event": "buy", "filters": [{"property": "x", "op": op, "value": value}]}
    assert problems(steps=[{"event": "view"}, step]) == [
        ("filter_value_invalid", "steps[1].filters[0].value", message)
    ]


def test_invalid_regex_names_the_problem() -> None:
    step = {"event": "buy", "filters": [{"property": "x", "op": "regex", "value": "("}]}
    [(code, field, message)] = problems(steps=[{"event": "view"}, step])
    assert (code, field) == ("regex_invalid", "steps[1].filters[0].value")
    assert message == "RE2 refuses the pattern: missing ): ("


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("is_set", None),
        ("in", ["a", 1]),
        ("gt", 1.5),
        ("lt", -3),
        ("regex", "^a+$"),
        ("eq", "x"),
        ("eq", 0),
        ("neq", False),
        ("contains", "x"),
    ],
)
def test_filter_value_valid(op: str, value: Any) -> None:
    step = {"event": "buy", "filters": [{"property": "x", "op": op, "value": value}]}
    assert problems(steps=[{"event": "view"}, step]) == []


def test_filter_fields_inside_any_of_and_exclusions() -> None:
    bad = [{"property": "x", "op": "gt", "value": "no"}]
    step = {"any_of": [{"event": "a"}, {"event": "b", "filters": bad}]}
    assert problems(steps=[{"event": "view"}, step]) == [
        ("filter_value_invalid", "steps[1].any_of[1].filters[0].value", "gt needs a number")
    ]
    assert problems(exclusions=[{"event": "refund", "filters": bad}]) == [
        ("filter_value_invalid", "exclusions[0].filters[0].value", "gt needs a number")
    ]


@pytest.mark.parametrize(
    ("index", "seconds", "message"),
    [
        (0, 60, "step 0 has no previous step"),
        (1, 0, f"within_seconds must be between 1 and {MAX_WINDOW_SECONDS}"),
        (1, MAX_WINDOW_SECONDS + 1, f"within_seconds must be between 1 and {MAX_WINDOW_SECONDS}"),
    ],
)
def test_step_window_invalid(index: int, seconds: int, message: str) -> None:
    steps: list[dict[str, Any]] = [dict(s) for s in TWO_STEPS]
    steps[index]["within_seconds"] = seconds
    assert problems(steps=steps) == [
        ("step_window_invalid", f"steps[{index}].within_seconds", message)
    ]


def test_step_window_valid() -> None:
    assert problems(steps=[{"event": "view"}, {"event": "buy", "within_seconds": 1}]) == []


THREE_STEPS = [{"event": "a"}, {"event": "b"}, {"event": "c"}]


@pytest.mark.parametrize(
    "exclusion",
    [
        {"event": "x", "from_step": 2},  # to the last step (2): empty range
        {"event": "x", "from_step": 1, "to_step": 1},
        {"event": "x", "from_step": 2, "to_step": 1},
        {"event": "x", "from_step": -1},
        {"event": "x", "to_step": 3},
    ],
)
def test_exclusion_range_invalid(exclusion: dict[str, Any]) -> None:
    assert problems(steps=THREE_STEPS, exclusions=[{"event": "y"}, exclusion]) == [
        (
            "exclusion_range_invalid",
            "exclusions[1]",
            "need 0 <= from_step < to_step <= last step index",
        )
    ]


@pytest.mark.parametrize(
    "exclusion",
    [{"event": "x"}, {"event": "x", "from_step": 1}, {"event": "x", "to_step": 1}],
)
def test_exclusion_range_valid(exclusion: dict[str, Any]) -> None:
    assert problems(steps=THREE_STEPS, exclusions=[exclusion]) == []


def test_exclusion_range_defaults_to_the_last_step() -> None:
    f = funnel(steps=THREE_STEPS, exclusions=[{"event": "x", "from_step": 1}])
    assert f.exclusion_range(f.exclusions[0]) == (1, 2)


def test_exclusion_of_a_step_event() -> None:
    steps = [{"event": "view"}, {"any_of": [{"event": "buy"}, {"event": "pay"}]}]
    assert problems(steps=steps, exclusions=[{"event": "pay"}]) == [
        (
            "exclusion_is_step",
            "exclusions[0].event",
            "'pay' is a step event; it cannot also be excluded",
        )
    ]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"order": "any", "exclusions": [{"event": "x"}]},
            "order",
            "order='any' with exclusions is not supported yet",
        ),
        (
            {"order": "any", "steps": [{"event": "a"}, {"event": "b", "within_seconds": 5}]},
            "order",
            "order='any' with per-step windows is not supported yet",
        ),
        (
            {"order": "any", "steps": [{"event": "a"}, {"any_of": [{"event": "a"}]}]},
            "order",
            "order='any' with steps sharing an event name is not supported yet",
        ),
        (
            {"counting": "total", "exclusions": [{"event": "x"}]},
            "counting",
            "counting='total' with exclusions is not supported yet",
        ),
        (
            {"counting": "total", "order": "strict"},
            "counting",
            "counting='total' with order='strict' is not supported yet",
        ),
        (
            {"hold_property": "plan", "order": "strict"},
            "hold_property",
            "hold_property with exclusions, order other than 'ordered' or counting='total'"
            " is not supported yet",
        ),
        (
            {"steps": [{"event": "a"}, {"event": "b", "optional": True}], "order": "any"},
            "steps[1].optional",
            "optional steps with order='any', hold_property or counting='total' is not"
            " supported yet",
        ),
    ],
)
def test_option_not_supported(overrides: dict[str, Any], field: str, message: str) -> None:
    assert problems(**overrides) == [("option_not_supported", field, message)]


def test_count_by_user_is_supported() -> None:
    assert problems(count_by="user") == []


def test_strict_and_any_order_are_supported() -> None:
    assert problems(order="strict") == []
    assert problems(order="any") == []
    assert problems(counting="total") == []
    assert problems(count_by="session") == []
    assert problems(hold_property="plan") == []
    optional = [{"event": "a"}, {"event": "b", "optional": True}, {"event": "c"}]
    assert problems(steps=optional) == []


def test_step_zero_cannot_be_optional() -> None:
    steps = [{"event": "a", "optional": True}, {"event": "b"}]
    assert problems(steps=steps) == [
        (
            "optional_step_invalid",
            "steps[0].optional",
            "step 0 starts every attempt; it cannot be optional",
        )
    ]


def test_one_error_per_rule_in_rule_order() -> None:
    got = problems(
        steps=[{"event": "a", "within_seconds": 5}],
        window_seconds=0,
        exclusions=[{"event": "a"}],
        order="any",
    )
    assert [code for code, _, _ in got] == [
        "steps_count",
        "window_out_of_range",
        "step_window_invalid",
        "exclusion_range_invalid",
        "exclusion_is_step",
        "option_not_supported",
    ]


@pytest.mark.parametrize(
    "doc",
    [
        {"id": "bad id", "project": "p", "steps": TWO_STEPS},
        {"id": "", "project": "p", "steps": TWO_STEPS},
        {"id": "f", "project": "", "steps": TWO_STEPS},
        {"id": "f", "project": "p", "steps": TWO_STEPS, "unknown": 1},
        {"id": "f", "project": "p", "steps": [{"event": "a", "filters": [{"property": ""}]}]},
        {
            "id": "f",
            "project": "p",
            "steps": [{"event": "a", "filters": [{"property": "k", "op": "like"}]}],
        },
        {"id": "f", "project": "p", "steps": TWO_STEPS, "order": "random"},
    ],
)
def test_schema_errors_before_rules(doc: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FunnelDefinition.model_validate(doc)


def test_names_and_labels() -> None:
    f = funnel(
        steps=[{"event": "view"}, {"any_of": [{"event": "pay"}, {"event": "buy"}]}],
        exclusions=[{"event": "refund"}],
    )
    assert f.step_event_names() == ["buy", "pay", "view"]
    assert f.event_names() == ["buy", "pay", "refund", "view"]
    assert [s.label() for s in f.steps] == ["view", "pay | buy"]
    assert FunnelStep(event="x").matchers()[0].event == "x"
