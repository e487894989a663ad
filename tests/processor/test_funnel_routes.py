"""Routing events to funnels by name (funnel/compiled.py `FunnelRoutes`): the processor
only advances the funnels an event's name concerns, so a funnel left out must be one the
event would not have changed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.compiled import DEFAULT_SESSION_GAP_MS, compile_funnel, funnel_routes
from schemas.funnels import FunnelDefinition
from tests.query_api.test_report_differential import NAMES, funnels

EVENT_NAMES = st.sampled_from(NAMES + "z")  # "z": named by no step
PROPERTIES = st.fixed_dictionaries(
    {}, optional={"k": st.sampled_from("xyz"), "n": st.sampled_from(["0", "1", "2"])}
)


def distinct(defs: list[FunnelDefinition]) -> list[FunnelDefinition]:
    return [d.model_copy(update={"id": f"f{i}"}) for i, d in enumerate(defs)]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(funnels(), min_size=1, max_size=5).map(distinct), EVENT_NAMES, PROPERTIES)
def test_every_funnel_an_event_concerns_is_routed_in_list_order(
    defs: list[FunnelDefinition], name: str, props: dict[str, str]
) -> None:
    routed = funnel_routes(defs, DEFAULT_SESSION_GAP_MS).of(name)
    for funnel in defs:
        entries = compile_funnel(funnel).entries(name, props, 1_000, "e")
        if entries:
            assert funnel in routed, (funnel.id, name)
    positions = [defs.index(f) for f in routed]
    assert positions == sorted(positions)


def test_routes_skip_a_funnel_the_name_is_not_in_and_keep_those_reading_every_event() -> None:
    base = {"project": "p", "window_seconds": 60}
    plain = FunnelDefinition.model_validate({**base, "id": "a", "steps": [{"event": "x"}]})
    strict = FunnelDefinition.model_validate(
        {**base, "id": "b", "order": "strict", "steps": [{"event": "y"}]}
    )
    sessions = FunnelDefinition.model_validate(
        {**base, "id": "c", "count_by": "session", "steps": [{"event": "y"}]}
    )
    routes = funnel_routes([plain, strict, sessions], DEFAULT_SESSION_GAP_MS)
    assert routes.of("x") == [plain, strict, sessions]
    assert routes.of("y") == [strict, sessions]
    assert routes.of("other") == [strict, sessions]
