"""Funnel definitions: ordered steps, each an event name with property filters.

Validation lives in one small rule per class (`FunnelRule`), each with a stable error code
that the API returns, so clients can branch on the code rather than on prose.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STEPS = 32
MAX_WINDOW_SECONDS = 90 * 24 * 3600
FilterOp = Literal[
    "eq", "neq", "in", "not_in", "contains", "regex", "gt", "lt", "is_set", "is_not_set"
]


class PropertyFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    property: str = Field(min_length=1, max_length=200)
    op: FilterOp = "eq"
    value: Any = None


class FunnelStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(min_length=1, max_length=200)
    filters: tuple[PropertyFilter, ...] = ()
    name: str | None = None


class FunnelDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    project: str = Field(min_length=1, max_length=64)
    name: str | None = None
    steps: tuple[FunnelStep, ...]
    window_seconds: int = 7 * 24 * 3600
    order: Literal["ordered"] = "ordered"

    def event_names(self) -> list[str]:
        return sorted({s.event for s in self.steps})


class FunnelValidationError(ValueError):
    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class FunnelRule:
    code = ""

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        raise NotImplementedError


class StepCountRule(FunnelRule):
    code = "steps_count"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        if not 2 <= len(funnel.steps) <= MAX_STEPS:
            return FunnelValidationError(
                self.code, f"a funnel needs 2 to {MAX_STEPS} steps", "steps"
            )
        return None


class WindowRule(FunnelRule):
    code = "window_out_of_range"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        if not 1 <= funnel.window_seconds <= MAX_WINDOW_SECONDS:
            return FunnelValidationError(
                self.code,
                f"window_seconds must be between 1 and {MAX_WINDOW_SECONDS} (90 days)",
                "window_seconds",
            )
        return None


class FilterValueRule(FunnelRule):
    code = "filter_value_invalid"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for i, step in enumerate(funnel.steps):
            for j, f in enumerate(step.filters):
                where = f"steps[{i}].filters[{j}].value"
                problem = _filter_value_problem(f)
                if problem:
                    return FunnelValidationError(self.code, problem, where)
        return None


def _filter_value_problem(f: PropertyFilter) -> str | None:
    if f.op in ("is_set", "is_not_set"):
        return None if f.value is None else f"{f.op} takes no value"
    if f.op in ("in", "not_in"):
        if not isinstance(f.value, list) or not f.value:
            return f"{f.op} needs a non-empty list"
        return None
    if f.op in ("gt", "lt"):
        if isinstance(f.value, bool) or not isinstance(f.value, int | float):
            return f"{f.op} needs a number"
        return None
    if f.op == "regex":
        if not isinstance(f.value, str):
            return "regex needs a string"
        try:
            re.compile(f.value)
        except re.error as exc:
            return f"invalid regex: {exc}"
        return None
    if f.value is None or isinstance(f.value, dict | list):
        return f"{f.op} needs a string, number or boolean"
    return None


RULES: tuple[FunnelRule, ...] = (StepCountRule(), WindowRule(), FilterValueRule())


def validate_funnel(funnel: FunnelDefinition) -> list[FunnelValidationError]:
    return [err for rule in RULES if (err := rule.check(funnel)) is not None]
