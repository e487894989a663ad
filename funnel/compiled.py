"""From a funnel definition to what every consumer of the rule reads: the compiled
definition. Built once per definition (definitions are frozen and replaced whole) and
session gap.

* the step and exclusion matchers (`funnel.match`: filters compiled once; the SQL report
  renders the same compiled filters, funnel/sql/filters.py),
* the fold rule (`funnel.fold.FoldRule`: milliseconds and step indexes),
* the held property and the session gap, one value for the live fold and the report SQL
  (the sessionizer's configured gap; 30 minutes by default).
"""

from __future__ import annotations

from dataclasses import dataclass

from funnel.fold import Entry, FoldRule, entries_for
from funnel.match import CompiledStep, StepIndex, compile_steps
from schemas.funnels import FunnelDefinition

# The sessionizer's default gap (FUNNELSTREAM_SESSION_GAP_SECONDS): a session ends after
# 30 minutes without events.
DEFAULT_SESSION_GAP_MS = 30 * 60 * 1000


@dataclass(frozen=True, slots=True)
class CompiledFunnel:
    definition: FunnelDefinition
    rule: FoldRule
    steps: tuple[CompiledStep, ...]
    # Exclusions matched like steps: index x is the definition's exclusion x.
    exclusions: tuple[CompiledStep, ...]
    step_index: StepIndex
    exclusion_index: StepIndex | None
    hold_property: str | None
    # Where `count_by: "session"` splits a visitor's events into sessions (live and SQL).
    session_gap_ms: int

    def held_value(self, props: dict[str, str]) -> str | None:
        """The value attempts are split by (a missing property is ""); None: not held, or
        held inside sessions, where the value travels in the entries (`FoldRule.held`)."""
        if self.hold_property is None or self.rule.held:
            return None
        return props.get(self.hold_property, "")

    def event_names(self) -> frozenset[str]:
        """The names its steps and exclusions match: any other event yields no entry
        unless the rule reads every event."""
        excluded = self.exclusion_index.events if self.exclusion_index else frozenset()
        return self.step_index.events | excluded

    def entries(
        self, name: str, props: dict[str, str], ts: int, event_id: str, tie: int | None = None
    ) -> list[Entry]:
        """The entries of one event ([] when it does not concern this funnel); `tie`: the
        event's `uuid_order` if the caller has it."""
        matched = self.step_index.match(name, props)
        excluded = self.exclusion_index.match(name, props) if self.exclusion_index else []
        every = self.rule.reads_every_event
        if not matched and not excluded and not every:
            return []
        held = self.hold_property if self.rule.held else None
        value = None if held is None else props.get(held, "")
        return entries_for(ts, event_id, matched, excluded, other=every, value=value, tie=tie)


def fold_rule(funnel: FunnelDefinition, session_gap_ms: int = DEFAULT_SESSION_GAP_MS) -> FoldRule:
    n = len(funnel.steps)
    return FoldRule(
        steps=n,
        window_ms=funnel.window_seconds * 1000,
        step_windows_ms=tuple(
            None if s.within_seconds is None else s.within_seconds * 1000 for s in funnel.steps
        ),
        sources=((),) + tuple(tuple(funnel.sources(k)) for k in range(1, n)),
        exclusions=tuple(funnel.exclusion_range(x) for x in funnel.exclusions),
        strict=funnel.order == "strict",
        count_attempts=funnel.counting == "total",
        any_order=funnel.order == "any",
        session_gap_ms=session_gap_ms if funnel.count_by == "session" else None,
        held=funnel.count_by == "session" and funnel.hold_property is not None,
    )


_CACHE: dict[tuple[int, int], tuple[FunnelDefinition, CompiledFunnel]] = {}


def compile_funnel(
    funnel: FunnelDefinition, session_gap_ms: int = DEFAULT_SESSION_GAP_MS, *, cache: bool = True
) -> CompiledFunnel:
    """The compiled definition (cached by identity and session gap). `cache=False` for a
    definition used once (an ad hoc report): a cached one is kept until 10,000 others
    have been, and a definition may hold lists of 100,000 values."""
    key = (id(funnel), session_gap_ms)
    cached = _CACHE.get(key)
    if cached is not None and cached[0] is funnel:
        return cached[1]
    if len(_CACHE) > 10_000:  # definitions replaced many times: start over
        _CACHE.clear()
    steps = compile_steps(funnel.steps)
    exclusions = compile_steps(funnel.exclusions)
    built = CompiledFunnel(
        funnel,
        fold_rule(funnel, session_gap_ms),
        steps,
        exclusions,
        StepIndex(steps),
        StepIndex(exclusions) if exclusions else None,
        funnel.hold_property,
        session_gap_ms,
    )
    if cache:
        _CACHE[key] = (funnel, built)
    return built


class FunnelRoutes:
    """Which of a list of funnels an event name concerns, built once per list: a funnel in
    strict order or counted by session reads every event (`CompiledFunnel.entries`), any
    other one only the events one of its steps or exclusions names, so the others are
    skipped without matching. Each answer keeps the list's order."""

    def __init__(self, funnels: list[FunnelDefinition], session_gap_ms: int) -> None:
        self.funnels = funnels
        every: list[int] = []
        named: dict[str, set[int]] = {}
        for i, funnel in enumerate(funnels):
            compiled = compile_funnel(funnel, session_gap_ms)
            if compiled.rule.reads_every_event:
                every.append(i)
                continue
            for name in compiled.event_names():
                named.setdefault(name, set()).add(i)
        self._every = [funnels[i] for i in every]
        self._by_name = {
            name: [funnels[i] for i in sorted(members | set(every))]
            for name, members in named.items()
        }

    def of(self, event_name: str) -> list[FunnelDefinition]:
        return self._by_name.get(event_name, self._every)


_ROUTES: dict[tuple[int, int], FunnelRoutes] = {}


def funnel_routes(funnels: list[FunnelDefinition], session_gap_ms: int) -> FunnelRoutes:
    """The routes of a list of funnels (cached by the list's identity: the catalog hands
    the same list to every event of a project until its definitions change)."""
    key = (id(funnels), session_gap_ms)
    cached = _ROUTES.get(key)
    if cached is not None and cached.funnels is funnels:
        return cached
    if len(_ROUTES) > 1_000:  # lists made per call (re-folds): start over
        _ROUTES.clear()
    built = _ROUTES[key] = FunnelRoutes(funnels, session_gap_ms)
    return built
