"""The forecast (query_api/forecast.py) backtested on generated data with known rates:
history drawn from a known funnel, a forecast made from it, the future drawn from the same
funnel; over many rounds the intervals cover the truth at their stated level. Then the
point figures on hand-computable counts, and answers that stay finite whatever the counts.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_api.forecast import forecast

# FORECAST_BACKTEST_ROUNDS=2000 for a tighter run.
ROUNDS = int(os.environ.get("FORECAST_BACKTEST_ROUNDS", "150"))
TRUE_RATES = (0.4, 0.25)
PER_DAY = 30.0
DAYS, HORIZON, TARGET = 14.0, 7.0, 60


def _chain(rng: np.random.Generator, entrants: int) -> list[int]:
    counts = [entrants]
    for p in TRUE_RATES:
        counts.append(int(rng.binomial(counts[-1], p)))
    return counts


def test_intervals_cover_the_truth_at_their_level() -> None:
    rng = np.random.default_rng(7)
    level = 0.9
    covered = {"last step": 0, "rate": 0, "entrants needed": 0, "days needed": 0}
    end_to_end = math.prod(TRUE_RATES)
    for _ in range(ROUNDS):
        history = _chain(rng, int(rng.poisson(PER_DAY * DAYS)))
        f = forecast(history, DAYS, horizon_days=HORIZON, target=TARGET, level=level)
        future = _chain(rng, int(rng.poisson(PER_DAY * HORIZON)))
        last = f.steps[-1]
        assert last.low is not None and last.high is not None
        covered["last step"] += last.low <= future[-1] <= last.high
        rate = f.rates[1].rate
        assert rate.low is not None and rate.high is not None
        covered["rate"] += rate.low <= TRUE_RATES[1] <= rate.high
        needed, days = f.entrants_needed, f.days_needed
        assert needed is not None and needed.low is not None and needed.high is not None
        assert days is not None and days.low is not None and days.high is not None
        covered["entrants needed"] += needed.low <= TARGET / end_to_end <= needed.high
        days_true = TARGET / end_to_end / PER_DAY
        covered["days needed"] += days.low <= days_true <= days.high
    # 150 rounds at 0.9: standard deviation 0.025; 3 of them either way. The predictive
    # interval of a count includes both ends, so it may cover a little more.
    for name, hits in covered.items():
        assert 0.9 - 0.075 <= hits / ROUNDS <= 0.9 + 0.075, (name, hits / ROUNDS)


def test_point_figures() -> None:
    # 700 entered in 14 days (50 a day), 280 of 700 reached step 2 (0.4), 70 of 280
    # (0.25): end to end 0.1. 100 purchases need 1000 entrants, 20 days.
    f = forecast([700, 280, 70], 14, horizon_days=7, target=100)
    assert f.entrants_per_day.expected == 50
    assert [r.rate.expected for r in f.rates] == [0.4, 0.25]
    assert f.steps[0].expected == 350
    # Posterior means: (280.5 / 701) * (70.5 / 281) * 350.
    assert f.steps[2].expected == pytest.approx(350 * 280.5 / 701 * 70.5 / 281)
    assert f.entrants_needed is not None and f.entrants_needed.expected == pytest.approx(1000)
    assert f.days_needed is not None and f.days_needed.expected == pytest.approx(20)
    given_top = forecast([700, 280, 70], 14, horizon_days=7, entrants=1000)
    assert given_top.steps[0].expected == given_top.steps[0].low == 1000
    assert given_top.entrants_needed is None


def test_more_history_narrows_the_interval() -> None:
    small = forecast([70, 28, 7], 14, horizon_days=7, entrants=1000)
    large = forecast([7000, 2800, 700], 14, horizon_days=7, entrants=1000)
    width = [(f.steps[2].high or 0) - (f.steps[2].low or 0) for f in (small, large)]
    assert width[1] < width[0] / 2


@settings(deadline=None, max_examples=25)
@given(
    st.lists(st.integers(0, 500), min_size=2, max_size=4),
    st.sampled_from([None, 1, 10**6]),
)
def test_finite_or_null_whatever_the_counts(drops: list[int], target: int | None) -> None:
    reached = [int(x) for x in np.cumsum(drops[::-1])[::-1]]
    f = forecast(reached, 3.5, horizon_days=30, target=target, entrants=None)
    values = [f.entrants_per_day, f.entrants, *f.steps, *(r.rate for r in f.rates)]
    values += [e for e in (f.entrants_needed, f.days_needed) if e is not None]
    for e in values:
        for x in (e.expected, e.low, e.high):
            assert x is None or math.isfinite(x)
