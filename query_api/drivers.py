"""Conversion drivers: which features are over-represented among the entities that
converted at a step versus those that dropped. Pure (counts in, ranked features out).

Per feature, the 2x2 table (converted / dropped) x (with / without the feature):
* the odds ratio of converting with the feature against without it, with its Woolf (log)
  interval, from statsmodels' Table2x2 (0.5 added to every cell when one is 0);
* a two-sided p-value by the experiment comparison's rule (query_api/experiment.py): the
  two-proportion z-test where every expected cell is >= 5, else Fisher's exact test,
  comparing the conversion rate with the feature and without it;
* Holm-Bonferroni over every feature tested (many features are tested at once).
Features held by fewer than `min_support` entities are not tested. Features with an odds
ratio above 1 go to `converting`, below 1 to `dropping`; each list is ordered by adjusted
p-value, then by the strength of the odds ratio, and cut to `top`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.contingency_tables import Table2x2

from query_api.experiment import Rate, holm, two_proportion_test


@dataclass(frozen=True, slots=True)
class Feature:
    kind: str
    name: str
    value: str
    converted_with: int
    dropped_with: int


@dataclass(frozen=True, slots=True)
class Driver:
    feature: Feature
    conversion_with: float
    conversion_without: float | None
    odds_ratio: float
    odds_ratio_low: float
    odds_ratio_high: float
    test: str
    p_value: float
    p_value_adjusted: float


@dataclass(frozen=True, slots=True)
class Drivers:
    converted: int
    dropped: int
    tested: int
    converting: list[Driver]
    dropping: list[Driver]


def features_from_rows(rows: Sequence[Sequence[object]]) -> tuple[int, int, list[Feature]]:
    """(converted, dropped, features) from rows (kind, name, value, converted, dropped) of
    query_api/sql/drivers.py, the first of kind 'total'."""
    converted = dropped = 0
    features = []
    for kind, name, value, with_converted, with_dropped in rows:
        a, b = int(with_converted), int(with_dropped)  # type: ignore[call-overload]
        if kind == "total":
            converted, dropped = a, b
        else:
            features.append(Feature(str(kind), str(name), str(value), a, b))
    return converted, dropped, features


def rank(
    converted: int,
    dropped: int,
    features: Sequence[Feature],
    *,
    min_support: int,
    top: int,
    alpha: float = 0.05,
) -> Drivers:
    tested: list[tuple[Feature, float, float, float, str, float, float, float | None]] = []
    for f in features:
        a, b = f.converted_with, f.dropped_with
        c, d = converted - a, dropped - b
        if a + b < min_support:
            continue
        table = Table2x2(np.array([[a, b], [c, d]], dtype=float), shift_zeros=True)
        low, high = table.oddsratio_confint(alpha=alpha)
        result = two_proportion_test(
            Rate(a, a + b, None, None, None), Rate(c, c + d, None, None, None)
        )
        if result is None:  # every entity has the feature: nothing to compare with
            continue
        without = c / (c + d) if c + d else None
        tested.append(
            (
                f,
                float(table.oddsratio),
                float(low),
                float(high),
                result.test,
                result.p_value,
                a / (a + b),
                without,
            )
        )
    adjusted = holm([t[5] for t in tested])
    drivers = [
        Driver(f, rate, without, ratio, low, high, test, p, q)
        for (f, ratio, low, high, test, p, rate, without), q in zip(tested, adjusted, strict=True)
    ]

    def order(d: Driver) -> tuple[float, float, str, str, str]:
        f = d.feature
        return (d.p_value_adjusted, -abs(math.log(d.odds_ratio)), f.kind, f.name, f.value)

    converting = sorted((d for d in drivers if d.odds_ratio > 1), key=order)[:top]
    dropping = sorted((d for d in drivers if d.odds_ratio < 1), key=order)[:top]
    return Drivers(converted, dropped, len(drivers), converting, dropping)
