"""Funnel definitions: steps (an event with property filters, or any of several such
events), a conversion window, per-step windows, exclusions and the counting unit.

Validation lives in one small rule per class (`FunnelRule`), each with a stable error code
that the API returns, so clients can branch on the code rather than on prose.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.filter_values import list_values, number_problem, regex_problem
from schemas.properties import flatten_value

MAX_STEPS = 32
MAX_WINDOW_SECONDS = 90 * 24 * 3600
# Size limits, each refused by its own rule (stable code), so that no definition makes
# saving, matching every event or building a report's SQL expensive without bound.
MAX_FILTERS = 20  # per step, per any_of alternative, per exclusion
MAX_ANY_OF = 20  # alternatives of one step
MAX_EXCLUSIONS = 10
MAX_LIST_VALUES = 10_000  # members of one in / not_in list
MAX_FUNNEL_LIST_VALUES = 100_000  # members of all lists of one definition
# The whole definition, as its canonical JSON (`definition_bytes`). The query API's body
# cap is at least this plus an ad hoc report's envelope (funnelstream/config.py), so a
# definition this rule accepts always fits in a request, and no body the cap lets through
# can hold a definition whose parsing costs more than this bounds.
MAX_DEFINITION_BYTES = 256 * 1024
MAX_VALUE_CHARS = 4096  # one eq / neq / contains value or list member, as text
MAX_REGEX_CHARS = 1000
MAX_NAME_CHARS = 200  # event and property names
MAX_LABEL_CHARS = 1000  # display names of funnels and steps
FilterOp = Literal[
    "eq", "neq", "in", "not_in", "contains", "regex", "gt", "lt", "is_set", "is_not_set"
]


class PropertyFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    property: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    op: FilterOp = "eq"
    value: Any = None


class EventMatch(BaseModel):
    """One event name with property filters (all must hold)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    filters: tuple[PropertyFilter, ...] = ()


class FunnelStep(BaseModel):
    """`event` + `filters`, or `any_of` alternatives (exactly one of the two forms)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(default="", max_length=MAX_NAME_CHARS)
    filters: tuple[PropertyFilter, ...] = ()
    any_of: tuple[EventMatch, ...] = ()
    name: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    # Max time from the previous step of the same attempt (inclusive); not on step 0.
    within_seconds: int | None = None
    optional: bool = False

    def matchers(self) -> tuple[EventMatch, ...]:
        if self.any_of:
            return self.any_of
        # Not re-validated: a step with no event must reach StepShapeRule, not raise here.
        return (EventMatch.model_construct(event=self.event, filters=self.filters),)

    def label(self) -> str:
        return self.event or " | ".join(m.event for m in self.any_of)


class Exclusion(BaseModel):
    """An event that, between reaching step `from_step` and reaching `to_step` (0-based;
    default: the last step), discards that attempt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    filters: tuple[PropertyFilter, ...] = ()
    from_step: int = 0
    to_step: int | None = None


class FunnelDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    project: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    steps: tuple[FunnelStep, ...]
    window_seconds: int = 7 * 24 * 3600
    order: Literal["ordered", "strict", "any"] = "ordered"
    exclusions: tuple[Exclusion, ...] = ()
    count_by: Literal["visitor", "user", "session"] = "visitor"
    counting: Literal["unique", "total"] = "unique"
    hold_property: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)

    def step_event_names(self) -> list[str]:
        return sorted({m.event for s in self.steps for m in s.matchers()})

    def event_names(self) -> list[str]:
        """Every event name a report reads: steps' and exclusions'."""
        return sorted(set(self.step_event_names()) | {x.event for x in self.exclusions})

    def exclusion_range(self, x: Exclusion) -> tuple[int, int]:
        return x.from_step, len(self.steps) - 1 if x.to_step is None else x.to_step

    def sources(self, k: int) -> list[int]:
        """Steps whose attempt an event of step k > 0 may extend: k-1, and before it each
        step reached by skipping optional steps (k-2 if k-1 is optional, and so on)."""
        j = k - 1
        out = [j]
        while j > 0 and self.steps[j].optional:
            j -= 1
            out.append(j)
        return out

    def next_steps(self, k: int) -> list[int]:
        """Steps an attempt holding step k can take next (k+1, and past optional ones)."""
        return [m for m in range(k + 1, len(self.steps)) if k in self.sources(m)]


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
        for where, f in _all_filters(funnel):
            problem = _filter_value_problem(f)
            if problem:
                return FunnelValidationError(self.code, problem, f"{where}.value")
        return None


def _all_filters(funnel: FunnelDefinition) -> list[tuple[str, PropertyFilter]]:
    out = []
    for i, step in enumerate(funnel.steps):
        out += [(f"steps[{i}].filters[{j}]", f) for j, f in enumerate(step.filters)]
        for a, alt in enumerate(step.any_of):
            out += [(f"steps[{i}].any_of[{a}].filters[{j}]", f) for j, f in enumerate(alt.filters)]
    for x, excl in enumerate(funnel.exclusions):
        out += [(f"exclusions[{x}].filters[{j}]", f) for j, f in enumerate(excl.filters)]
    return out


class StepShapeRule(FunnelRule):
    """A step is `event` (+ `filters`) or `any_of`, never both or neither."""

    code = "step_shape"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for i, step in enumerate(funnel.steps):
            if bool(step.event) == bool(step.any_of):
                message = "a step needs either `event` or a non-empty `any_of`"
                return FunnelValidationError(self.code, message, f"steps[{i}]")
            if step.any_of and step.filters:
                message = "with `any_of`, put filters on each alternative"
                return FunnelValidationError(self.code, message, f"steps[{i}].filters")
        return None


class StepWindowRule(FunnelRule):
    code = "step_window_invalid"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for i, step in enumerate(funnel.steps):
            if step.within_seconds is None:
                continue
            where = f"steps[{i}].within_seconds"
            if i == 0:
                return FunnelValidationError(self.code, "step 0 has no previous step", where)
            if not 1 <= step.within_seconds <= MAX_WINDOW_SECONDS:
                message = f"within_seconds must be between 1 and {MAX_WINDOW_SECONDS}"
                return FunnelValidationError(self.code, message, where)
        return None


class OptionalStepRule(FunnelRule):
    """Step 0 starts every attempt, so it cannot be optional."""

    code = "optional_step_invalid"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        if funnel.steps and funnel.steps[0].optional:
            message = "step 0 starts every attempt; it cannot be optional"
            return FunnelValidationError(self.code, message, "steps[0].optional")
        return None


class ExclusionRangeRule(FunnelRule):
    code = "exclusion_range_invalid"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for x, excl in enumerate(funnel.exclusions):
            start, end = funnel.exclusion_range(excl)
            if not 0 <= start < end < len(funnel.steps):
                message = "need 0 <= from_step < to_step <= last step index"
                return FunnelValidationError(self.code, message, f"exclusions[{x}]")
        return None


class ExclusionIsStepRule(FunnelRule):
    """An excluded event may not also be a step's event: which one wins would be a guess."""

    code = "exclusion_is_step"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        steps = set(funnel.step_event_names())
        for x, excl in enumerate(funnel.exclusions):
            if excl.event in steps:
                message = f"{excl.event!r} is a step event; it cannot also be excluded"
                return FunnelValidationError(self.code, message, f"exclusions[{x}].event")
        return None


class NotSupportedRule(FunnelRule):
    """Options the schema names but the report cannot compute yet: refused, never guessed."""

    code = "option_not_supported"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        unsupported = [
            (
                funnel.order == "any" and bool(funnel.exclusions),
                "order",
                "order='any' with exclusions",
            ),
            (
                funnel.order == "any" and any(s.within_seconds is not None for s in funnel.steps),
                "order",
                "order='any' with per-step windows",
            ),
            (
                funnel.order == "any" and not _distinct_step_names(funnel),
                "order",
                "order='any' with steps sharing an event name",
            ),
            (
                funnel.counting == "total" and bool(funnel.exclusions),
                "counting",
                "counting='total' with exclusions",
            ),
            (
                funnel.counting == "total" and funnel.order != "ordered",
                "counting",
                f"counting='total' with order={funnel.order!r}",
            ),
            (
                funnel.hold_property is not None
                and (
                    bool(funnel.exclusions)
                    or funnel.order != "ordered"
                    or funnel.counting != "unique"
                ),
                "hold_property",
                "hold_property with exclusions, order other than 'ordered' or counting='total'",
            ),
        ]
        other_modes = (
            funnel.order == "any" or funnel.hold_property is not None or funnel.counting != "unique"
        )
        unsupported += [
            (
                s.optional and other_modes,
                f"steps[{i}].optional",
                "optional steps with order='any', hold_property or counting='total'",
            )
            for i, s in enumerate(funnel.steps)
        ]
        for flag, where, what in unsupported:
            if flag:
                message = f"{what} is not supported yet"
                return FunnelValidationError(self.code, message, where)
        return None


def _distinct_step_names(funnel: FunnelDefinition) -> bool:
    """No event name is used by two steps (so no event can match two steps)."""
    names = [{m.event for m in s.matchers()} for s in funnel.steps]
    return sum(len(n) for n in names) == len(set().union(*names))


def _filter_value_problem(f: PropertyFilter) -> str | None:
    if f.op in ("is_set", "is_not_set"):
        return None if f.value is None else f"{f.op} takes no value"
    if f.op in ("in", "not_in"):
        if not isinstance(f.value, list) or not f.value:
            return f"{f.op} needs a non-empty list"
        # Nested lists or objects would be matched as their JSON text: never meant, and
        # unbounded to flatten.
        if any(isinstance(v, list | dict) for v in f.value):
            return f"{f.op} takes strings, numbers, booleans or null"
        return None
    if f.op in ("gt", "lt"):
        if isinstance(f.value, bool) or not isinstance(f.value, int | float):
            return f"{f.op} needs a number"
        return None
    if f.op == "regex":
        # Whether RE2 takes the pattern is RegexRule's question.
        return None if isinstance(f.value, str) else "regex needs a string"
    if f.value is None or isinstance(f.value, dict | list):
        return f"{f.op} needs a string, number or boolean"
    return None


def _filter_lists(funnel: FunnelDefinition) -> list[tuple[str, tuple[PropertyFilter, ...]]]:
    """Every list of filters that must hold together, with its field path."""
    out = []
    for i, step in enumerate(funnel.steps):
        out.append((f"steps[{i}].filters", step.filters))
        alternatives = enumerate(step.any_of)
        out += [(f"steps[{i}].any_of[{a}].filters", alt.filters) for a, alt in alternatives]
    out += [(f"exclusions[{x}].filters", excl.filters) for x, excl in enumerate(funnel.exclusions)]
    return out


class FilterCountRule(FunnelRule):
    code = "filters_too_many"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for where, filters in _filter_lists(funnel):
            if len(filters) > MAX_FILTERS:
                message = f"at most {MAX_FILTERS} filters per step, alternative or exclusion"
                return FunnelValidationError(self.code, message, where)
        return None


class AnyOfCountRule(FunnelRule):
    code = "any_of_too_many"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for i, step in enumerate(funnel.steps):
            if len(step.any_of) > MAX_ANY_OF:
                message = f"at most {MAX_ANY_OF} alternatives per step"
                return FunnelValidationError(self.code, message, f"steps[{i}].any_of")
        return None


class ExclusionCountRule(FunnelRule):
    code = "exclusions_too_many"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        if len(funnel.exclusions) > MAX_EXCLUSIONS:
            message = f"at most {MAX_EXCLUSIONS} exclusions"
            return FunnelValidationError(self.code, message, "exclusions")
        return None


class NumberRangeRule(FunnelRule):
    """gt/lt bounds inside the number domain (schemas/filter_values.py); no NaN or
    Infinity anywhere in a filter, since JSON storage cannot hold them."""

    code = "number_out_of_range"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for where, f in _all_filters(funnel):
            if f.op in ("gt", "lt"):
                problem = number_problem(f.value)
                # A value that is no number at all is FilterValueRule's to report.
                is_number = isinstance(f.value, int | float) and not isinstance(f.value, bool)
                if problem is not None and is_number:
                    return FunnelValidationError(self.code, f"{f.op} {problem}", f"{where}.value")
                continue
            members = f.value if isinstance(f.value, list) else [f.value]
            for v in members:
                if isinstance(v, float) and not math.isfinite(v):
                    message = f"{f.op} cannot compare with NaN or Infinity"
                    return FunnelValidationError(self.code, message, f"{where}.value")
        return None


class ListSizeRule(FunnelRule):
    code = "list_too_large"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        total = 0
        for where, f in _all_filters(funnel):
            if f.op not in ("in", "not_in") or not isinstance(f.value, list):
                continue
            if len(f.value) > MAX_LIST_VALUES:
                message = f"{f.op} takes at most {MAX_LIST_VALUES} values"
                return FunnelValidationError(self.code, message, f"{where}.value")
            total += len(f.value)
            if total > MAX_FUNNEL_LIST_VALUES:
                message = f"a funnel's in/not_in lists may hold {MAX_FUNNEL_LIST_VALUES} values"
                return FunnelValidationError(self.code, message, f"{where}.value")
        return None


def definition_bytes(funnel: FunnelDefinition) -> int | None:
    """The size of the canonical JSON (compact, UTF-8, every field spelled out): never less
    than the same definition sent compactly by a client, which omits defaults and
    `project`. None: text that cannot be encoded (TextRule names it)."""
    try:
        return len(funnel.model_dump_json())
    except ValueError:
        return None


class DefinitionSizeRule(FunnelRule):
    code = "definition_too_large"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        size = definition_bytes(funnel)
        if size is not None and size > MAX_DEFINITION_BYTES:
            message = f"the definition is {size} bytes as JSON; at most {MAX_DEFINITION_BYTES}"
            return FunnelValidationError(self.code, message, "definition")
        return None


class ValueLengthRule(FunnelRule):
    code = "value_too_long"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for where, f in _all_filters(funnel):
            if f.op in ("eq", "neq", "contains") and not isinstance(f.value, list | dict):
                texts = [flatten_value(f.value)]
            elif f.op in ("in", "not_in"):
                texts = list_values(f.value)
            else:
                continue
            if any(len(t) > MAX_VALUE_CHARS for t in texts):
                message = f"a filter value may be at most {MAX_VALUE_CHARS} characters"
                return FunnelValidationError(self.code, message, f"{where}.value")
        return None


class RegexLengthRule(FunnelRule):
    code = "regex_too_long"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for where, f in _all_filters(funnel):
            if f.op == "regex" and isinstance(f.value, str) and len(f.value) > MAX_REGEX_CHARS:
                message = f"a regex may be at most {MAX_REGEX_CHARS} characters"
                return FunnelValidationError(self.code, message, f"{where}.value")
        return None


class RegexRule(FunnelRule):
    """The pattern compiles under RE2 with ClickHouse match()'s options: what the report
    would refuse is refused at save time, and the processor never backtracks."""

    code = "regex_invalid"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for where, f in _all_filters(funnel):
            # Over-long patterns are RegexLengthRule's; not compiled at all.
            if f.op != "regex" or not isinstance(f.value, str) or len(f.value) > MAX_REGEX_CHARS:
                continue
            problem = regex_problem(f.value)
            if problem is not None:
                return FunnelValidationError(self.code, problem, f"{where}.value")
        return None


class TextRule(FunnelRule):
    """Filter values are valid Unicode: JSON can spell a lone surrogate, which cannot be
    stored, written to ClickHouse or bound as a parameter. (Typed text fields are checked
    by the schema itself.)"""

    code = "text_invalid"

    def check(self, funnel: FunnelDefinition) -> FunnelValidationError | None:
        for where, f in _all_filters(funnel):
            members = f.value if isinstance(f.value, list) else [f.value]
            for v in members:
                if isinstance(v, str) and not _is_unicode(v):
                    message = "not valid Unicode text (a lone surrogate)"
                    return FunnelValidationError(self.code, message, f"{where}.value")
        return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


RULES: tuple[FunnelRule, ...] = (
    StepCountRule(),
    WindowRule(),
    StepShapeRule(),
    FilterValueRule(),
    StepWindowRule(),
    OptionalStepRule(),
    ExclusionRangeRule(),
    ExclusionIsStepRule(),
    NotSupportedRule(),
    FilterCountRule(),
    AnyOfCountRule(),
    ExclusionCountRule(),
    NumberRangeRule(),
    ListSizeRule(),
    ValueLengthRule(),
    RegexLengthRule(),
    RegexRule(),
    TextRule(),
    # Last: a definition over several count limits names the first of them instead.
    DefinitionSizeRule(),
)


def validate_funnel(funnel: FunnelDefinition) -> list[FunnelValidationError]:
    return [err for rule in RULES if (err := rule.check(funnel)) is not None]
