"""Experiment comparison: the statistics on per-variant step counts. Pure (counts in,
numbers out), so it is tested without ClickHouse against published values.

The method (docs/experiments.md states it for users):

* Each variant's conversion per step and end to end with a Wilson score interval.
* The family of comparisons: every step-to-step conversion (step k of those who reached
  step k-1) plus end to end (the last step of those who reached step 1; with two steps it
  is the one step conversion, so it is not compared twice), for each variant against the
  control.
* Each comparison: the difference of the rates (variant - control) with Newcombe's hybrid
  score interval (built from the two Wilson intervals) and the lift (variant / control - 1)
  with the log interval of the ratio; a two-sided p-value from the two-proportion z-test
  (pooled) when every expected cell of the 2x2 table is >= 5, else from Fisher's exact
  test; Holm-Bonferroni adjusted p-values over the whole family, significant where the
  adjusted p-value is <= alpha.
* Power: the smallest absolute difference the current sample detects with power 0.8, and
  the sample per group a chosen minimum detectable effect (an absolute difference) needs,
  both by the normal approximation on Cohen's arcsine effect size h (what statsmodels'
  NormalIndPower solves for, in closed form), at alpha / m (m: the family's size; Holm
  never tests a comparison at a stricter level, so the power holds under the
  correction).
* Verdict: `significant` (Holm rejects), `not yet` (not significant and fewer entities
  than the chosen effect needs), `no difference detectable` (not significant with enough
  entities: no difference as large as the chosen effect).

statsmodels and scipy compute every interval, test and normal quantile: their maintained
implementations of the textbook methods, checked against published values in
tests/query_api/test_experiment.py. Holm's step-down and the power formulas are a few
lines of arithmetic on those quantiles, held to statsmodels' own functions in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from scipy.stats import fisher_exact, norm
from scipy.stats.contingency import expected_freq
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

from query_api.sql.experiment import ASSIGNED, SEVERAL_VALUES

POWER = 0.8
# The z-test's normal approximation holds where every expected cell count is at least this.
MIN_EXPECTED_CELL = 5

Verdict = Literal["significant", "not yet", "no difference detectable"]


@dataclass(frozen=True, slots=True)
class Rate:
    """successes of trials, with the Wilson interval at 1 - alpha (None without trials)."""

    successes: int
    trials: int
    rate: float | None
    low: float | None
    high: float | None


def wilson(successes: int, trials: int, alpha: float) -> Rate:
    if trials == 0:
        return Rate(successes, trials, None, None, None)
    low, high = proportion_confint(successes, trials, alpha=alpha, method="wilson")
    return Rate(successes, trials, successes / trials, float(low), float(high))


@dataclass(frozen=True, slots=True)
class TestResult:
    test: Literal["z", "fisher"]
    p_value: float


def two_proportion_test(variant: Rate, control: Rate) -> TestResult | None:
    """Two-sided: the pooled two-proportion z-test where every expected cell is >= 5,
    Fisher's exact test otherwise. None without trials on either side."""
    if variant.trials == 0 or control.trials == 0:
        return None
    table = [
        [variant.successes, variant.trials - variant.successes],
        [control.successes, control.trials - control.successes],
    ]
    if float(expected_freq(table).min()) >= MIN_EXPECTED_CELL:
        _, p = proportions_ztest(
            [variant.successes, control.successes], [variant.trials, control.trials]
        )
        return TestResult("z", _probability(p))
    return TestResult("fisher", _probability(fisher_exact(table).pvalue))


def _probability(value: object) -> float:
    # Sums of terms can land a hair above 1.
    return min(1.0, max(0.0, float(value)))  # type: ignore[arg-type]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: sorted ascending, the i-th
    (from 0) times m - i, made non-decreasing, capped at 1.

    Arithmetic, not a distribution, written here because statsmodels' `multipletests`
    runs a full `gc.collect()` on every Holm call (a pause of the whole service); the
    tests hold this to `multipletests(method="holm")` on random families."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p_values[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def _effect_to_difference(baseline: float, h: float) -> float | None:
    """The absolute difference from `baseline` that Cohen's h = `h` means, upwards where
    the rate has room, else downwards; None where neither fits in [0, 1]."""
    phi = math.asin(math.sqrt(baseline))
    if phi + h / 2 <= math.pi / 2:
        return math.sin(phi + h / 2) ** 2 - baseline
    if phi - h / 2 >= 0:
        return baseline - math.sin(phi - h / 2) ** 2
    return None


def _z_sum(alpha: float) -> float:
    """z(1 - alpha/2) + z(power): the effect, in standard errors, a two-sided test at
    `alpha` detects with power 0.8 (the normal approximation; the opposite tail's
    rejections, below 1e-6 of the power here, are left out, as in Cohen's tables)."""
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(POWER))


def detectable_difference(control: Rate, variant: Rate, alpha: float) -> float | None:
    """The smallest absolute difference from the control's rate that the current trials
    detect with power 0.8 at `alpha` (two-sided): Cohen's h = z-sum * sqrt(1/n1 + 1/n2),
    as a rate difference."""
    if control.rate is None or variant.trials == 0:
        return None
    h = _z_sum(alpha) * math.sqrt(1 / control.trials + 1 / variant.trials)
    return _effect_to_difference(control.rate, h)


def sample_needed(baseline: float | None, effect: float, alpha: float) -> int | None:
    """Trials per group to detect an absolute difference `effect` from `baseline` with
    power 0.8 at `alpha` (two-sided, equal groups): upwards where the rate has room, else
    downwards; None where neither fits in [0, 1]."""
    if baseline is None:
        return None
    target = baseline + effect if baseline + effect <= 1 else baseline - effect
    if not 0 <= target <= 1:
        return None
    h = abs(2 * math.asin(math.sqrt(target)) - 2 * math.asin(math.sqrt(baseline)))
    return math.ceil(2 * (_z_sum(alpha) / h) ** 2)


@dataclass(frozen=True, slots=True)
class Comparison:
    variant: str
    kind: Literal["step", "end_to_end"]
    from_step: int
    to_step: int
    control_rate: Rate
    variant_rate: Rate
    difference: float | None
    difference_low: float | None
    difference_high: float | None
    lift: float | None
    lift_low: float | None
    lift_high: float | None
    test: Literal["z", "fisher"] | None
    p_value: float | None
    p_value_adjusted: float | None
    significant: bool
    detectable_difference: float | None
    sample_needed_per_group: int | None
    still_needed: int | None
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class VariantSteps:
    value: str
    steps: list[Rate]  # per step: entities reaching it of those who reached step 1


@dataclass(frozen=True, slots=True)
class Experiment:
    control: str
    variants: list[VariantSteps]
    comparisons: list[Comparison]
    family_size: int
    verdicts: dict[str, Verdict]


def _pairs(steps: int) -> list[tuple[Literal["step", "end_to_end"], int, int]]:
    """The family per variant: (kind, from step, to step), 0-based."""
    pairs: list[tuple[Literal["step", "end_to_end"], int, int]] = [
        ("step", k - 1, k) for k in range(1, steps)
    ]
    if steps > 2:
        pairs.append(("end_to_end", 0, steps - 1))
    return pairs


Interval = tuple[float | None, float | None, float | None]


def _difference(variant: Rate, control: Rate, alpha: float) -> Interval:
    """The difference of rates (variant - control) with Newcombe's hybrid score interval."""
    if variant.rate is None or control.rate is None:
        return (None, None, None)
    low, high = confint_proportions_2indep(
        variant.successes,
        variant.trials,
        control.successes,
        control.trials,
        method="newcomb",
        compare="diff",
        alpha=alpha,
    )
    return (variant.rate - control.rate, float(low), float(high))


def _lift(variant: Rate, control: Rate, alpha: float) -> Interval:
    """The lift (variant / control - 1) with the log interval of the ratio."""
    if variant.rate is None or not control.rate or not variant.successes:
        # No lift against a zero control rate; no log interval for a zero variant count.
        lift = None if variant.rate is None or not control.rate else variant.rate / control.rate - 1
        return (lift, None, None)
    low, high = confint_proportions_2indep(
        variant.successes,
        variant.trials,
        control.successes,
        control.trials,
        method="log",
        compare="ratio",
        alpha=alpha,
    )
    return (variant.rate / control.rate - 1, float(low) - 1, float(high) - 1)


def compare(
    reached: Mapping[str, Sequence[int]], control: str, alpha: float, effect: float
) -> Experiment:
    """`reached`: per variant, entities reaching each step (a non-increasing list, one
    entry per step). `control`: the variant the others are compared with (in `reached`).
    `effect`: the minimum detectable effect, an absolute difference of rates."""
    steps = len(reached[control])
    pairs = _pairs(steps)
    others = sorted(v for v in reached if v != control)
    rows: list[tuple[str, Literal["step", "end_to_end"], int, int, Rate, Rate, TestResult | None]]
    rows = []
    for value in others:
        for kind, lo, hi in pairs:
            c = wilson(reached[control][hi], reached[control][lo], alpha)
            v = wilson(reached[value][hi], reached[value][lo], alpha)
            rows.append((value, kind, lo, hi, c, v, two_proportion_test(v, c)))
    tested = [r[6].p_value for r in rows if r[6] is not None]
    adjusted = iter(holm(tested))
    family = max(len(tested), 1)
    comparisons = []
    for value, kind, lo, hi, c, v, result in rows:
        p_adjusted = next(adjusted) if result is not None else None
        significant = p_adjusted is not None and p_adjusted <= alpha
        needed = sample_needed(c.rate, effect, alpha / family)
        still = None if needed is None else max(0, needed - c.trials) + max(0, needed - v.trials)
        verdict: Verdict = "significant"
        if not significant:
            verdict = "not yet" if still is None or still > 0 else "no difference detectable"
        comparisons.append(
            Comparison(
                value,
                kind,
                lo,
                hi,
                c,
                v,
                *_difference(v, c, alpha),
                *_lift(v, c, alpha),
                None if result is None else result.test,
                None if result is None else result.p_value,
                p_adjusted,
                significant,
                detectable_difference(c, v, alpha / family),
                needed,
                still,
                verdict,
            )
        )
    variants = [
        VariantSteps(value, [wilson(n, counts[0], alpha) for n in counts])
        for value, counts in sorted(reached.items())
    ]
    # A variant's verdict is its end-to-end comparison's (the last of its family).
    verdicts = {
        c.variant: c.verdict for c in comparisons if (c.from_step, c.to_step) == (0, steps - 1)
    }
    return Experiment(control, variants, comparisons, len(tested), verdicts)


@dataclass(frozen=True, slots=True)
class VariantCounts:
    """Per variant, entities reaching each step; entities seen with several values and
    entities without a value (both entered the funnel and are in no variant)."""

    reached: dict[str, list[int]]
    several_values: int
    unassigned: int


def counts_from_rows(rows: Sequence[Sequence[object]], steps: int) -> VariantCounts:
    """From rows (status, variant, level, entities) of query_api/sql/experiment.py."""
    reached: dict[str, list[int]] = {}
    several = unassigned = 0
    for status, variant, level, entities in rows:
        count = int(entities)  # type: ignore[call-overload]
        if status == ASSIGNED:
            counts = reached.setdefault(str(variant), [0] * steps)
            for k in range(int(level)):  # type: ignore[call-overload]
                counts[k] += count
        elif status == SEVERAL_VALUES:
            several += count
        else:
            unassigned += count
    return VariantCounts(reached, several, unassigned)
