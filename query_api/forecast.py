"""Forecasts from a funnel's observed step conversions. Pure (counts in, numbers out), so
it is tested without ClickHouse, and backtested on generated data with known rates.

The model (docs/forecasts.md states it for users):

* Step k's conversion (of the entities that reached step k-1, those that reached step k,
  as the report counts them) is a binomial rate with Jeffreys' prior: its posterior is
  Beta(converted + 1/2, trials - converted + 1/2). Steps are independent. Entities still
  in progress count as not converted, as in the report (leaving them out would count
  the quick converters of the last window and not the slow ones: a bias upwards, the
  larger; a range much longer than the funnel's window makes either small).
* Entities enter the funnel as a Poisson process; its daily rate has the Jeffreys
  posterior Gamma(entered + 1/2, 1 / days observed).
* Expected conversions at each step for a horizon: entrants (given, or drawn from the
  rate for `horizon_days`) passed down a chain of binomials, each with a rate drawn from
  its posterior. The interval is the central `level` of this posterior predictive (a
  beta-binomial chain): it holds both the uncertainty of the rates (small samples give
  wide intervals) and the chance of the coming entrants.
* Entrants needed for a target at the last step: target / end-to-end rate; days needed:
  target / (end-to-end rate x daily entrants). Their intervals are over the posteriors
  of the rates (the uncertainty of the rates, not the chance of the coming entrants).

Intervals come from a fixed number of draws with a fixed seed, so the same counts give
the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, gamma

DRAWS = 10_000
_SEED = 20_251_203


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate and the central interval of the given level (None where the
    quantity is not finite: a rate of 0 never reaches a target)."""

    expected: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class StepRate:
    """Step k's conversion: `converted` of `trials` (entities that reached the previous
    step); step 0 has none."""

    converted: int
    trials: int
    rate: Estimate


@dataclass(frozen=True, slots=True)
class Forecast:
    level: float
    horizon_days: float
    entrants_per_day: Estimate
    rates: list[StepRate]
    entrants: Estimate
    steps: list[Estimate]
    target: int | None
    entrants_needed: Estimate | None
    days_needed: Estimate | None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _interval(draws: np.ndarray, expected: float | None, level: float) -> Estimate:
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Estimate(expected, _finite(float(low)), _finite(float(high)))


def forecast(
    reached: Sequence[int],
    days_observed: float,
    *,
    horizon_days: float,
    entrants: int | None = None,
    target: int | None = None,
    level: float = 0.9,
) -> Forecast:
    """`reached`: entities per step, as the report counts them over `days_observed` days.
    `entrants`: the top-of-funnel volume to forecast for (default: the current daily rate
    times `horizon_days`). `target`: conversions wanted at the last step."""
    rng = np.random.default_rng(_SEED)
    tail = (1 - level) / 2
    rates = []
    draws = []
    for k in range(1, len(reached)):
        converted = reached[k]
        trials = reached[k - 1]
        a, b = converted + 0.5, trials - converted + 0.5
        low, high = beta.ppf([tail, 1 - tail], a, b)
        point = converted / trials if trials else None
        rates.append(StepRate(converted, trials, Estimate(point, float(low), float(high))))
        draws.append(rng.beta(a, b, size=DRAWS))

    shape, scale = reached[0] + 0.5, 1 / days_observed
    per_day = Estimate(
        reached[0] / days_observed,
        *(float(x) for x in gamma.ppf([tail, 1 - tail], shape, scale=scale)),
    )
    daily = rng.gamma(shape, scale, size=DRAWS)
    if entrants is None:
        coming = rng.poisson(daily * horizon_days)
        top = _interval(coming, reached[0] / days_observed * horizon_days, level)
    else:
        coming = np.full(DRAWS, entrants, dtype=np.int64)
        top = Estimate(float(entrants), float(entrants), float(entrants))

    # Expected values: the mean entrants times the product of posterior mean rates.
    mean = top.expected or 0.0
    steps = [top]
    counts = coming
    for k, p in enumerate(draws):
        counts = rng.binomial(counts, p)
        s = rates[k]
        mean *= (s.converted + 0.5) / (s.trials + 1)
        steps.append(_interval(counts, mean, level))

    needed = days = None
    if target is not None:
        end_to_end = np.prod(np.vstack(draws), axis=0)
        observed = math.prod(r.rate.expected or 0.0 for r in rates)
        with np.errstate(divide="ignore"):
            needed_draws = target / end_to_end
            days_draws = needed_draws / daily
        point = target / observed if observed else math.inf
        needed = _interval(needed_draws, _finite(point), level)
        rate_now = reached[0] / days_observed
        days = _interval(days_draws, _finite(point / rate_now) if rate_now else None, level)
    return Forecast(level, horizon_days, per_day, rates, top, steps, target, needed, days)
