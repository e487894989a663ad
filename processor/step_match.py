"""Does an event match a funnel step? Pure; mirrors query_api/sql/filters.py.

Properties are compared as ClickHouse stores them: every value flattened to a string
(`schemas.properties.flatten`), numbers compared after parsing as floats.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from schemas.funnels import FunnelStep, PropertyFilter
from schemas.properties import flatten_value


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _as_float(text: str | None) -> float | None:
    # Python's float() also takes ' 12', '1_000' and non-ASCII digits; toFloat64OrNull
    # does not, and the SQL report must agree with the live state.
    if text is None or not text.isascii() or "_" in text or text != text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def filter_matches(f: PropertyFilter, properties: dict[str, str]) -> bool:
    # A missing property reads as '' like ClickHouse's Map lookup; is_set tells them apart.
    present = f.property in properties
    actual = properties.get(f.property, "")
    if f.op == "is_set":
        return present
    if f.op == "is_not_set":
        return not present
    if f.op in ("gt", "lt"):
        number = _as_float(actual) if present else None
        if number is None:
            return False
        return number > float(f.value) if f.op == "gt" else number < float(f.value)
    if f.op in ("in", "not_in"):
        values = {flatten_value(v) for v in f.value}
        return (actual in values) == (f.op == "in")
    if f.op == "contains":
        return flatten_value(f.value) in actual
    if f.op == "regex":
        return _regex(str(f.value)).search(actual) is not None
    expected = flatten_value(f.value)
    return (actual == expected) == (f.op == "eq")


def step_matches(step: FunnelStep, event: str, properties: dict[str, str]) -> bool:
    return any(
        m.event == event and all(filter_matches(f, properties) for f in m.filters)
        for m in step.matchers()
    )


def matching_steps(steps: tuple[FunnelStep, ...], event: str, props: dict[str, Any]) -> list[int]:
    return [i for i, s in enumerate(steps) if step_matches(s, event, props)]


class StepIndex:
    """A funnel's steps indexed by event name, built once per definition: the per-event
    cost is one dict lookup plus the filters of the steps naming that event."""

    def __init__(self, steps: tuple[FunnelStep, ...]) -> None:
        self._by_event: dict[str, list[tuple[int, tuple[PropertyFilter, ...]]]] = {}
        for i, step in enumerate(steps):
            for m in step.matchers():
                self._by_event.setdefault(m.event, []).append((i, m.filters))

    def match(self, event: str, properties: dict[str, str]) -> list[int]:
        candidates = self._by_event.get(event)
        if not candidates:
            return []
        matched = {
            i for i, filters in candidates if all(filter_matches(f, properties) for f in filters)
        }
        return sorted(matched)


_INDEXES: dict[int, tuple[object, StepIndex]] = {}


def step_index(funnel: object, steps: tuple[FunnelStep, ...]) -> StepIndex:
    """The StepIndex of a funnel definition (cached by identity; definitions are frozen)."""
    cached = _INDEXES.get(id(funnel))
    if cached is not None and cached[0] is funnel:
        return cached[1]
    if len(_INDEXES) > 10_000:  # definitions replaced many times: start over
        _INDEXES.clear()
    index = StepIndex(steps)
    _INDEXES[id(funnel)] = (funnel, index)
    return index
