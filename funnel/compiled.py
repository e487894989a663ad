"""From a funnel definition to what the stage machine folds: its rule and one event's
entries. Built once per definition (definitions are frozen and replaced whole)."""

from __future__ import annotations

from dataclasses import dataclass

from funnel.fold import Entry, FoldRule, entries_for
from funnel.match import StepIndex
from schemas.funnels import FunnelDefinition, FunnelStep


@dataclass(frozen=True, slots=True)
class LiveFunnel:
    rule: FoldRule
    steps: StepIndex
    # Exclusions matched like steps: index x is the definition's exclusion x.
    exclusions: StepIndex | None
    hold_property: str | None

    def held_value(self, props: dict[str, str]) -> str | None:
        """The value attempts are split by (a missing property is ""); None: not held, or
        held inside sessions, where the value travels in the entries (`FoldRule.held`)."""
        if self.hold_property is None or self.rule.held:
            return None
        return props.get(self.hold_property, "")

    def entries(self, name: str, props: dict[str, str], ts: int, event_id: str) -> list[Entry]:
        """The entries of one event ([] when it does not concern this funnel)."""
        matched = self.steps.match(name, props)
        excluded = self.exclusions.match(name, props) if self.exclusions else []
        # Strict order and sessions read every event: one matching nothing still breaks a
        # strict chain, or ends a session by its gap.
        every = self.rule.strict or self.rule.session_gap_ms is not None
        held = self.hold_property if self.rule.held else None
        value = None if held is None else props.get(held, "")
        return entries_for(ts, event_id, matched, excluded, other=every, value=value)


# The reports split sessions at 30-minute gaps whatever the sessionizer's configured gap
# (funnel/sql/report.py); live counts must equal the report's, so they do too.
REPORT_SESSION_GAP_MS = 30 * 60 * 1000


def fold_rule(funnel: FunnelDefinition) -> FoldRule:
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
        session_gap_ms=REPORT_SESSION_GAP_MS if funnel.count_by == "session" else None,
        held=funnel.count_by == "session" and funnel.hold_property is not None,
    )


_CACHE: dict[int, tuple[FunnelDefinition, LiveFunnel]] = {}


def live_funnel(funnel: FunnelDefinition) -> LiveFunnel:
    """The LiveFunnel of a definition (cached by identity)."""
    cached = _CACHE.get(id(funnel))
    if cached is not None and cached[0] is funnel:
        return cached[1]
    if len(_CACHE) > 10_000:  # definitions replaced many times: start over
        _CACHE.clear()
    exclusions = tuple(
        FunnelStep.model_construct(event=x.event, filters=x.filters, any_of=())
        for x in funnel.exclusions
    )
    built = LiveFunnel(
        fold_rule(funnel),
        StepIndex(funnel.steps),
        StepIndex(exclusions) if exclusions else None,
        funnel.hold_property,
    )
    _CACHE[id(funnel)] = (funnel, built)
    return built
