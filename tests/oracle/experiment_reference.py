"""The experiment comparison's counts in plain Python, on top of the funnel oracle
(tests/oracle/funnel_reference.py): which variant each counted entity belongs to, and
how many entities of each variant reached each step.

The rule: a counted entity belongs to the first non-empty value of the variant property
on its events in [from, to) (by time, then event id); one seen with two or more values
belongs to none and is counted apart, as is one that entered the funnel without a value.
With a segment, only entities with an event in [from, to) on which every filter holds
are counted.
Written entity by entity over all events, not from the SQL's grouped rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from schemas.funnels import FunnelDefinition, PropertyFilter
from tests.oracle.funnel_reference import RefEvent, _entity_of, _holds, _sessions, held_steps


@dataclass
class VariantCounts:
    """Per variant, entities reaching each step; entities with several values and none."""

    reached: dict[str, list[int]] = field(default_factory=dict)
    several_values: int = 0
    unassigned: int = 0


def variant_counts(
    funnel: FunnelDefinition,
    events: Iterable[RefEvent],
    start_ms: int,
    end_ms: int,
    prop: str,
    segment: Sequence[PropertyFilter] = (),
) -> VariantCounts:
    everything = list(events)
    identified = _entity_of(funnel, everything)
    sessions = _sessions(everything, start_ms, end_ms) if funnel.count_by == "session" else {}
    values: dict[str, set[str]] = defaultdict(set)
    members: set[str] = set()
    for e in everything:
        if not start_ms <= e.timestamp_ms < end_ms:
            continue
        entity = sessions.get(e.event_id) or identified.get(e.visitor_id, e.visitor_id)
        if e.properties.get(prop, ""):
            values[entity].add(e.properties[prop])
        if all(_holds(f, e.properties) for f in segment):
            members.add(entity)
    out = VariantCounts()
    steps = len(funnel.steps)
    for entity, slots in held_steps(funnel, everything, start_ms, end_ms).items():
        level = max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
        if not level or (segment and entity not in members):
            continue
        seen = values.get(entity, set())
        if len(seen) > 1:
            out.several_values += 1
        elif not seen:
            out.unassigned += 1
        else:
            (variant,) = seen
            counts = out.reached.setdefault(variant, [0] * steps)
            for k in range(level):
                counts[k] += 1
    return out
