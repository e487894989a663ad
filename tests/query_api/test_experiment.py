"""The experiment statistics (query_api/experiment.py) against published values:
Newcombe (1998) for the Wilson and hybrid score intervals, Fisher's tea-tasting table and
scipy's documented example for the exact test, Holm's step-down on a worked family,
Cohen (1988, table 6.4.1) for the sample size. Then the method's pinned choices: which
test, which family, which verdict."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from query_api import experiment
from query_api.experiment import Rate, compare, holm, sample_needed, two_proportion_test, wilson
from query_api.sql.experiment import ASSIGNED, SEVERAL_VALUES, UNASSIGNED


def close(a: float | None, b: float, digits: int = 4) -> bool:
    return a is not None and round(a, digits) == round(b, digits)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    # Newcombe 1998, "Two-sided confidence intervals for the single proportion", table I,
    # method 3 (score interval without continuity correction).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611)],
)
def test_wilson_interval_matches_newcombe(
    successes: int, trials: int, low: float, high: float
) -> None:
    rate = wilson(successes, trials, 0.05)
    assert close(rate.low, low) and close(rate.high, high)
    assert rate.rate == successes / trials


def test_no_trials_no_rate() -> None:
    assert wilson(0, 0, 0.05) == Rate(0, 0, None, None, None)


@pytest.mark.parametrize(
    ("a", "b", "low", "high"),
    # Newcombe 1998, "Interval estimation for the difference between independent
    # proportions", table II, method 10 (hybrid score).
    [((56, 70), (48, 80), 0.0524, 0.3339), ((9, 10), (3, 10), 0.1705, 0.8090)],
)
def test_difference_interval_matches_newcombe(
    a: tuple[int, int], b: tuple[int, int], low: float, high: float
) -> None:
    result = compare({"A": [b[1], b[0]], "B": [a[1], a[0]]}, "A", 0.05, 0.05)
    (c,) = result.comparisons
    assert close(c.difference, a[0] / a[1] - b[0] / b[1])
    assert close(c.difference_low, low) and close(c.difference_high, high)


def test_fisher_where_an_expected_cell_is_small() -> None:
    # Fisher's lady tasting tea: 3 of 4 right each way, two-sided p = 17/35.
    result = two_proportion_test(Rate(3, 4, 0.75, None, None), Rate(1, 4, 0.25, None, None))
    assert result is not None and result.test == "fisher"
    assert close(result.p_value, 17 / 35, 6)
    # scipy.stats.fisher_exact's documented example [[6, 2], [1, 4]]: p = 0.1026.
    result = two_proportion_test(Rate(6, 8, 0.75, None, None), Rate(1, 5, 0.2, None, None))
    assert result is not None and close(result.p_value, 0.10256410256410256, 10)


def test_z_test_where_every_expected_cell_is_five_or_more() -> None:
    # 56/70 vs 48/80: pooled z = 2.6502, two-sided p = 0.00805 (by hand: pooled rate
    # 104/150, standard error sqrt(p(1-p)(1/70 + 1/80))).
    result = two_proportion_test(Rate(56, 70, 0.8, None, None), Rate(48, 80, 0.6, None, None))
    assert result is not None and result.test == "z"
    pooled = 104 / 150
    z = (56 / 70 - 48 / 80) / math.sqrt(pooled * (1 - pooled) * (1 / 70 + 1 / 80))
    assert close(z, 2.6502)
    assert close(result.p_value, math.erfc(z / math.sqrt(2)), 8)


def test_the_boundary_of_five_expected() -> None:
    # 10 of 20 against 5 of 20: expected successes 7.5, failures 12.5: z. 2 of 20 against
    # 2 of 20: expected 2 per success cell: Fisher.
    z = two_proportion_test(Rate(10, 20, 0.5, None, None), Rate(5, 20, 0.25, None, None))
    fisher = two_proportion_test(Rate(2, 20, 0.1, None, None), Rate(2, 20, 0.1, None, None))
    assert z is not None and z.test == "z"
    assert fisher is not None and fisher.test == "fisher" and fisher.p_value == 1.0


def test_holm_step_down() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone: 0.02, 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


# Few examples: statsmodels' Holm runs a full gc.collect() per call (why we do not call it
# in the service), a third of a second in a test process.
@settings(deadline=None, max_examples=8)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_holm_equals_statsmodels(p_values: list[float]) -> None:
    _, want, _, _ = multipletests(p_values, alpha=0.05, method="holm")
    assert holm(p_values) == pytest.approx([min(1.0, p) for p in want], abs=1e-12)


def test_sample_size_matches_cohen() -> None:
    # Cohen 1988, table 6.4.1: h = 0.2, two-sided alpha 0.05, power 0.8: n = 392 (392.4
    # before rounding up). Rates 0.5 and 0.5998 are h = 0.2 apart.
    target = math.sin(math.asin(math.sqrt(0.5)) + 0.1) ** 2
    assert sample_needed(0.5, target - 0.5, 0.05) == 393


@pytest.mark.parametrize(
    ("baseline", "effect", "alpha"), [(0.1, 0.02, 0.05), (0.5, 0.1, 0.01), (0.02, 0.005, 0.0125)]
)
def test_power_agrees_with_statsmodels(baseline: float, effect: float, alpha: float) -> None:
    h = proportion_effectsize(baseline + effect, baseline)
    want = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=0.8, ratio=1.0)
    assert sample_needed(baseline, effect, alpha) == math.ceil(want)
    # And back: the difference detectable with n1 = 1000, n2 = 1500.
    h_at = NormalIndPower().solve_power(nobs1=1000, alpha=alpha, power=0.8, ratio=1.5)
    want_difference = math.sin(math.asin(math.sqrt(baseline)) + h_at / 2) ** 2 - baseline
    control = wilson(round(baseline * 1000), 1000, alpha)
    got = experiment.detectable_difference(control, wilson(0, 1500, alpha), alpha)
    assert got == pytest.approx(want_difference, rel=1e-4)


def test_power_downwards_agrees_with_statsmodels() -> None:
    # A baseline without room above: the effect is looked for below it, in both directions
    # of the calculation (the branches the cases above never reach).
    baseline, effect, alpha = 0.97, 0.05, 0.05
    h = proportion_effectsize(baseline, baseline - effect)
    want = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=0.8, ratio=1.0)
    assert sample_needed(baseline, effect, alpha) == math.ceil(want)
    h_at = NormalIndPower().solve_power(nobs1=100, alpha=alpha, power=0.8, ratio=1.0)
    assert math.asin(math.sqrt(baseline)) + h_at / 2 > math.pi / 2  # no room above
    want_difference = baseline - math.sin(math.asin(math.sqrt(baseline)) - h_at / 2) ** 2
    control = wilson(round(baseline * 100), 100, alpha)
    got = experiment.detectable_difference(control, wilson(0, 100, alpha), alpha)
    assert got == pytest.approx(want_difference, rel=1e-4)


def test_family_is_every_step_plus_end_to_end_per_variant() -> None:
    reached = {"A": [1000, 500, 100], "B": [1000, 520, 130], "C": [900, 400, 90]}
    result = compare(reached, "A", 0.05, 0.02)
    kinds = [(c.variant, c.kind, c.from_step, c.to_step) for c in result.comparisons]
    assert kinds == [
        ("B", "step", 0, 1),
        ("B", "step", 1, 2),
        ("B", "end_to_end", 0, 2),
        ("C", "step", 0, 1),
        ("C", "step", 1, 2),
        ("C", "end_to_end", 0, 2),
    ]
    assert result.family_size == 6
    raw = [c.p_value for c in result.comparisons]
    assert all(p is not None for p in raw)
    assert [c.p_value_adjusted for c in result.comparisons] == holm(
        [p for p in raw if p is not None]
    )
    assert set(result.verdicts) == {"B", "C"}


def test_two_steps_compare_once() -> None:
    result = compare({"A": [100, 10], "B": [100, 20]}, "A", 0.05, 0.02)
    assert [(c.kind, c.from_step, c.to_step) for c in result.comparisons] == [("step", 0, 1)]


def test_verdicts() -> None:
    big = 200_000
    # A real 2-point lift on a large sample.
    result = compare({"A": [big, big // 10], "B": [big, big // 10 + big // 50]}, "A", 0.05, 0.02)
    assert result.verdicts["B"] == "significant"
    # The same rates on few entities: not yet.
    result = compare({"A": [100, 10], "B": [100, 12]}, "A", 0.05, 0.02)
    assert result.verdicts["B"] == "not yet"
    (c,) = result.comparisons
    assert c.still_needed is not None and c.still_needed > 0
    # Equal rates on more entities than a 2-point effect needs: no difference detectable.
    result = compare({"A": [big, big // 10], "B": [big, big // 10]}, "A", 0.05, 0.02)
    assert result.verdicts["B"] == "no difference detectable"
    assert result.comparisons[0].still_needed == 0


def test_lift_interval() -> None:
    result = compare({"A": [1000, 100], "B": [1000, 150]}, "A", 0.05, 0.02)
    (c,) = result.comparisons
    assert close(c.lift, 0.5)
    assert c.lift_low is not None and c.lift_high is not None
    assert 0 < c.lift_low < 0.5 < c.lift_high
    # No lift against a zero control rate.
    (c,) = compare({"A": [10, 0], "B": [10, 3]}, "A", 0.05, 0.02).comparisons
    assert c.lift is None and c.difference is not None


def test_counts_from_rows() -> None:
    rows = [
        (UNASSIGNED, "", 1, 4),
        (ASSIGNED, "A", 1, 5),
        (ASSIGNED, "A", 3, 2),
        (ASSIGNED, "B", 2, 1),
        (SEVERAL_VALUES, "", 2, 3),
    ]
    counts = experiment.counts_from_rows(rows, 3)
    assert counts.reached == {"A": [7, 2, 2], "B": [1, 1, 0]}
    assert (counts.several_values, counts.unassigned) == (3, 4)


@settings(deadline=None, max_examples=60)
@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300)),
        min_size=2,
        max_size=4,
    ),
    st.floats(0.001, 0.2),
)
def test_any_counts_give_finite_answers(counts: list[tuple[int, int, int]], alpha: float) -> None:
    """Whatever the counts (zeros, all converting, one entity), every number is finite and
    probabilities stay in [0, 1]: the API never answers NaN or infinity."""
    reached = {
        f"v{i}": sorted([a + b + c + 1, b + c, c], reverse=True)
        for i, (a, b, c) in enumerate(counts)
    }
    result = compare(reached, "v0", alpha, 0.02)
    for c in result.comparisons:
        for value in (
            c.difference, c.difference_low, c.difference_high, c.lift, c.lift_low,
            c.lift_high, c.detectable_difference,
        ):  # fmt: skip
            assert value is None or math.isfinite(value)
        for p in (c.p_value, c.p_value_adjusted):
            assert p is None or 0 <= p <= 1
