"""Does an event match a funnel step? Pure; funnel/sql/filters.py renders the same
compiled steps as SQL.

Properties are compared as ClickHouse stores them: every value flattened to a string
(`schemas.properties.flatten`), numbers compared as Float64 and regexes run by RE2 with
ClickHouse match()'s options (both in `schemas.filter_values`).

Each filter is compiled once per definition (`compile_filter`): lists become frozensets,
the numeric bound a float, the pattern an RE2 program. Matching an event is lookups only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from schemas.filter_values import (
    compile_regex,
    list_values,
    number_bound,
    property_number,
    regex_text,
)
from schemas.funnels import Exclusion, FunnelStep, PropertyFilter
from schemas.properties import flatten_value

Properties = Mapping[str, str]
Matcher = Callable[[Properties], bool]


def _never(properties: Properties) -> bool:
    return False


def compile_filter(f: PropertyFilter) -> Matcher:
    """`f` as a function of an event's properties. Never raises, whatever the definition:
    validation refuses what cannot be matched, and a definition that got past it (an old
    stored one) matches nothing rather than stopping the processor."""
    key = f.property
    if f.op == "is_set":
        return lambda p: key in p
    if f.op == "is_not_set":
        return lambda p: key not in p
    if f.op in ("gt", "lt"):
        bound = number_bound(f.value)
        if bound is None:
            return _never
        if f.op == "gt":

            def greater(p: Properties) -> bool:
                number = property_number(p.get(key))
                return number is not None and number > bound

            return greater

        def less(p: Properties) -> bool:
            number = property_number(p.get(key))
            return number is not None and number < bound

        return less
    # A missing property reads as '' like ClickHouse's Map lookup; is_set tells them apart.
    if f.op in ("in", "not_in"):
        members = frozenset(list_values(f.value))
        if f.op == "in":
            return lambda p: p.get(key, "") in members
        return lambda p: p.get(key, "") not in members
    if f.op == "regex":
        try:
            program = compile_regex(str(f.value))
        except (re2.error, UnicodeEncodeError):
            return _never
        return lambda p: program.search(regex_text(p.get(key, ""))) is not None
    expected = flatten_value(f.value)
    if f.op == "contains":
        return lambda p: expected in p.get(key, "")
    if f.op == "eq":
        return lambda p: p.get(key, "") == expected
    return lambda p: p.get(key, "") != expected


def filter_matches(f: PropertyFilter, properties: Properties) -> bool:
    """One filter, compiled for this call; the per-event path holds compiled ones."""
    return compile_filter(f)(properties)


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """A filter with its test: the test answers for an event, the filter is what the SQL
    report renders (funnel/sql/filters.py), so both read the same compiled definition."""

    filter: PropertyFilter
    test: Matcher


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """One event name and its filters (all must hold)."""

    event: str
    filters: tuple[CompiledFilter, ...]

    def holds(self, properties: Properties) -> bool:
        return all(f.test(properties) for f in self.filters)


@dataclass(frozen=True, slots=True)
class CompiledStep:
    """A step (or an exclusion): its alternatives, any of which matches."""

    alternatives: tuple[CompiledMatch, ...]

    def matches(self, event: str, properties: Properties) -> bool:
        return any(m.event == event and m.holds(properties) for m in self.alternatives)


def compile_step(step: FunnelStep | Exclusion) -> CompiledStep:
    """A step's `any_of` alternatives, or its event and filters; an exclusion is matched
    like a step with one alternative."""
    matchers = step.matchers() if isinstance(step, FunnelStep) else (step,)
    return CompiledStep(
        tuple(
            CompiledMatch(m.event, tuple(CompiledFilter(f, compile_filter(f)) for f in m.filters))
            for m in matchers
        )
    )


def compile_steps(steps: Iterable[FunnelStep | Exclusion]) -> tuple[CompiledStep, ...]:
    return tuple(compile_step(s) for s in steps)


def step_matches(step: FunnelStep, event: str, properties: Properties) -> bool:
    return compile_step(step).matches(event, properties)


def matching_steps(steps: tuple[FunnelStep, ...], event: str, props: dict[str, Any]) -> list[int]:
    return StepIndex(compile_steps(steps)).match(event, props)


class StepIndex:
    """A funnel's compiled steps indexed by event name, built once per definition: the
    per-event cost is one dict lookup plus the compiled filters of the steps naming that
    event."""

    def __init__(self, steps: tuple[CompiledStep, ...]) -> None:
        self._by_event: dict[str, list[tuple[int, tuple[Matcher, ...]]]] = {}
        for i, step in enumerate(steps):
            for m in step.alternatives:
                tests = tuple(f.test for f in m.filters)
                self._by_event.setdefault(m.event, []).append((i, tests))

    @property
    def events(self) -> frozenset[str]:
        """The event names some step names: any other event matches none."""
        return frozenset(self._by_event)

    def match(self, event: str, properties: Properties) -> list[int]:
        candidates = self._by_event.get(event)
        if not candidates:
            return []
        if len(candidates) == 1:  # the usual case: one step names the event
            i, tests = candidates[0]
            if not tests:
                return [i]
            return [i] if all(t(properties) for t in tests) else []
        matched = {i for i, tests in candidates if all(t(properties) for t in tests)}
        return sorted(matched)
