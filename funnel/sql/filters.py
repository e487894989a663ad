"""Step conditions as ClickHouse expressions, rendered from the compiled steps the live
matcher runs (funnel/match.py): the same alternatives and filters, each filter the same
test in SQL.

What a value means (the Float64 bound, the list's strings) comes from
schemas/filter_values.py, which the matcher reads too."""

from __future__ import annotations

from typing import Any

from funnel.match import CompiledMatch, CompiledStep
from schemas.filter_values import engine_pattern, list_values, number_bound
from schemas.funnels import PropertyFilter
from schemas.properties import flatten_value


class Params:
    """Collects bound parameters so values never enter SQL text."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any, type_name: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{type_name}}}"


def filter_sql(f: PropertyFilter, params: Params) -> str:
    key = params.bind(f.property, "String")
    actual = f"properties[{key}]"
    if f.op == "is_set":
        return f"mapContains(properties, {key})"
    if f.op == "is_not_set":
        return f"NOT mapContains(properties, {key})"
    if f.op in ("gt", "lt"):
        sign = ">" if f.op == "gt" else "<"
        number = number_bound(f.value)
        if number is None:  # no Float64 bound: matches nothing, as in the processor
            return "0"
        bound = params.bind(number, "Float64")
        return f"ifNull(toFloat64OrNull({actual}) {sign} {bound}, 0)"
    if f.op in ("in", "not_in"):
        values = params.bind(list_values(f.value), "Array(String)")
        negate = "NOT " if f.op == "not_in" else ""
        return f"{negate}has({values}, {actual})"
    if f.op == "contains":
        return f"position({actual}, {params.bind(flatten_value(f.value), 'String')}) > 0"
    if f.op == "regex":
        return f"match({actual}, {params.bind(engine_pattern(str(f.value)), 'String')})"
    expected = params.bind(flatten_value(f.value), "String")
    return f"{actual} {'=' if f.op == 'eq' else '!='} {expected}"


def match_sql(m: CompiledMatch, params: Params) -> str:
    parts = [f"event = {params.bind(m.event, 'String')}"]
    parts.extend(filter_sql(f.filter, params) for f in m.filters)
    return "(" + " AND ".join(parts) + ")"


def step_sql(step: CompiledStep, params: Params) -> str:
    """A step's condition (an exclusion's too: one alternative, rendered the same)."""
    alternatives = [match_sql(m, params) for m in step.alternatives]
    return alternatives[0] if len(alternatives) == 1 else "(" + " OR ".join(alternatives) + ")"
