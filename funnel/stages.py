"""How many are at each stage of a funnel, from how many reached each step: one rule for
the live route (query_api/routes/live.py) and the funnel metrics (processor/
funnel_metrics.py). When a funnel counts attempts (`counting: "total"`) or sessions
(`count_by: "session"`), what is counted per step is the attempts or sessions that reached
it (a visitor's `step_attempts`), and those at a stage are the ones that reached it and
not the next."""

from __future__ import annotations


def at_stage_from_reached(reached: list[int]) -> list[int]:
    """Per step (index 0: step 1), those that reached it and not the next step."""
    return [n - (reached[k + 1] if k + 1 < len(reached) else 0) for k, n in enumerate(reached)]
