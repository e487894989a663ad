"""Funnel figures on /metrics, made from what the processor has anyway (docs/metrics.md).

* Transitions, corrections and time to convert are counted at flush, from the rows the
  batch wrote (`Outputs.transition_inserts()` and the late re-folds' corrections), never
  per event: the fold is the hot path, and a batch's rows are what the tables hold.
  Counters never go down: a late event that changes a transition already counted adds to
  the corrections counter (retracted, corrected) instead.
* Visitors at each stage are recomputed from the held states whenever /metrics is read
  (`export_stages`): the level each state keeps is the truth, so a gauge can never drift
  from it, whatever re-folds, erasures or rebalances did in between.

Label values are bounded: saved funnels only, at most `funnels_per_project` of each
project (the first by id, the rest counted in `funnelstream_funnel_metrics_omitted`), steps
1..n of the definition. Funnels counted by user are not exported (see
`exported_funnels`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import Counter as CounterMetric

from funnel.stages import at_stage_from_reached
from funnelstream import metrics
from processor.catalog import FunnelCatalog
from processor.rebuild import Refolds
from processor.rows import Row
from processor.state import VisitorState
from processor.transform import Outputs

# (project, funnel id) → its step count, for the funnels exported.
Exported = dict[tuple[str, str], int]
# (project, funnel, step, kind of the row)
RowKey = tuple[str, str, int, str]


def exported_funnels(
    catalog: FunnelCatalog, funnels_per_project: int
) -> tuple[Exported, Counter[str]]:
    """The funnels the metrics cover, and per project how many the cap leaves out.
    Funnels counted by user are left out: their progress is rebuilt from stored events
    after each batch (processor/user_funnels.py), not held per visitor here."""
    kept: Exported = {}
    omitted: Counter[str] = Counter()
    per_project: Counter[str] = Counter()
    # By id, not the catalog's order (an edit moves a funnel to its end): the funnels
    # kept stay the same as definitions change, and on every processor alike.
    for funnel in sorted(catalog.all(), key=lambda f: (f.project, f.id)):
        if funnel.count_by == "user":
            continue
        if per_project[funnel.project] < funnels_per_project:
            per_project[funnel.project] += 1
            kept[(funnel.project, funnel.id)] = len(funnel.steps)
        else:
            omitted[funnel.project] += 1
    return kept, omitted


@dataclass(slots=True)
class Tally:
    """What one write adds to the counters."""

    rows: Counter[RowKey] = field(default_factory=Counter)
    # (project, funnel, step) → seconds from the attempt's start to the step, one per row.
    seconds_to_convert: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)


def tally(rows: Iterable[Row], exported: Exported) -> Tally:
    """Count funnel_transitions rows by (project, funnel, step, kind); rows of funnels not
    exported, or past a definition's steps, are left out."""
    out = Tally()
    for row in rows:
        project, funnel_id, step, kind = row[0], row[1], row[3], row[8]
        steps = exported.get((project, funnel_id))
        if steps is None or not 1 <= step <= steps:
            continue
        out.rows[(project, funnel_id, step, kind)] += 1
        if kind != "retracted" and step > 1:
            seconds = (row[4] - row[5]) / 1000  # reached_at, chain_started_at: epoch ms
            out.seconds_to_convert.setdefault((project, funnel_id, step), []).append(seconds)
    return out


def stage_counts(
    states: Iterable[VisitorState], exported: Exported
) -> dict[tuple[str, str], list[int]]:
    """Per exported funnel, those at each stage (index 0: step 1), as the live route counts
    them: visitors by their deepest step, or, where the funnel counts attempts or sessions,
    those that reached each step and not the next (funnel/stages.py)."""
    counts = {key: [0] * steps for key, steps in exported.items()}
    reached: dict[tuple[str, str], list[int]] = {}
    for state in states:
        project = state.project_id
        for funnel_id, progress in state.funnels.items():
            held = counts.get((project, funnel_id))
            if held is None:
                continue
            attempts = progress.attempts
            if attempts:
                sums = reached.setdefault((project, funnel_id), [0] * len(held))
                for k, n in enumerate(attempts[: len(held)]):
                    sums[k] += n
            elif 0 < progress.level <= len(held):
                held[progress.level - 1] += 1
    for key, sums in reached.items():
        counts[key] = at_stage_from_reached(sums)
    return counts


class FunnelMetrics:
    def __init__(self, catalog: FunnelCatalog, funnels_per_project: int) -> None:
        self._catalog = catalog
        self._cap = funnels_per_project
        self._exported: Exported = {}
        self._for_version = -1

    def exported(self) -> Exported:
        if self._for_version != self._catalog.version:
            self._exported, omitted = exported_funnels(self._catalog, self._cap)
            self._for_version = self._catalog.version
            metrics.FUNNEL_METRICS_OMITTED.clear()
            for project, n in omitted.items():
                metrics.FUNNEL_METRICS_OMITTED.labels(project).set(n)
        return self._exported

    def count_written(self, outputs: Outputs, refolds: Refolds | None) -> None:
        """After a batch's write succeeded: count the transition rows it wrote."""
        found = tally(_written_rows(outputs, refolds), self.exported())
        for (project, funnel_id, step, kind), n in found.rows.items():
            if kind == "reached":
                transitions(project, funnel_id, step).inc(n)
            else:
                metrics.FUNNEL_CORRECTIONS.labels(project, funnel_id, str(step), kind).inc(n)
        for (project, funnel_id, step), seconds in found.seconds_to_convert.items():
            histogram = metrics.FUNNEL_SECONDS_TO_CONVERT.labels(project, funnel_id, str(step))
            metrics.observe_many(histogram, seconds)

    def export_stages(self, states: Iterable[VisitorState]) -> None:
        """Set the stage gauges from the held states (at scrape time). Every exported step
        is set, zero included, and its transitions counter made to exist at zero, so rates
        and ratios have a series before the first visitor gets there."""
        exported = self.exported()
        counts = stage_counts(states, exported)
        metrics.FUNNEL_VISITORS_AT_STAGE.clear()
        for (project, funnel_id), at_stage in counts.items():
            for index, n in enumerate(at_stage):
                step = str(index + 1)
                metrics.FUNNEL_VISITORS_AT_STAGE.labels(project, funnel_id, step).set(n)
                transitions(project, funnel_id, index + 1)


def transitions(project: str, funnel_id: str, step: int) -> CounterMetric:
    from_step = str(step - 1) if step > 1 else ""
    return metrics.FUNNEL_TRANSITIONS.labels(project, funnel_id, str(step), from_step)


def _written_rows(outputs: Outputs, refolds: Refolds | None) -> Iterator[Row]:
    for rows in outputs.transition_inserts():
        yield from rows
    if refolds is not None:
        yield from refolds.fixes.retractions
        yield from refolds.fixes.transitions
