"""Retention arithmetic on the rows of query_api.sql.cohorts.py. Pure, so it is tested
without ClickHouse.

Per cohort (and breakdown value), for each period N in 0..periods:
* `returned`: entities that returned in period N (bounded retention, "on period N");
* `returned_on_or_after`: entities that returned in period N or a later one, up to
  `periods` (unbounded retention, "on or after period N");
* rates of both over the cohort's size; `complete`: period N has ended by the end of
  the range (or now), so its count can still grow where it has not.
A cohort's repeat rate: its entities with any return, over its size. Totals per value sum
the cohorts whose period N is complete (a weighted average of their rates).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Period:
    period: int
    returned: int
    returned_on_or_after: int
    rate: float
    rate_on_or_after: float
    complete: bool


@dataclass(frozen=True, slots=True)
class Cohort:
    start: date
    value: str
    entities: int
    repeated: int
    repeat_rate: float
    periods: list[Period]


@dataclass(frozen=True, slots=True)
class Total:
    value: str
    entities: int
    repeated: int
    repeat_rate: float
    periods: list[Period]


def period_start(cohort: date, interval: str, n: int) -> date:
    """The first day of the n-th period after the one starting on `cohort`."""
    if interval == "day":
        return cohort + timedelta(days=n)
    if interval == "week":
        return cohort + timedelta(weeks=n)
    months = cohort.year * 12 + cohort.month - 1 + n
    return date(months // 12, months % 12 + 1, 1)


def _ended(cohort: date, interval: str, n: int, tz: ZoneInfo, until: datetime) -> bool:
    end = datetime.combine(period_start(cohort, interval, n + 1), time(), tzinfo=tz)
    return end <= until


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def cohorts_from_rows(
    rows: Iterable[Sequence[object]], periods: int, interval: str, tz: str, until: datetime
) -> list[Cohort]:
    """From rows (kind, cohort, value, period, entities); `until`: the end of the range,
    or now if earlier (what has happened so far)."""
    on: dict[tuple[date, str], dict[int, int]] = defaultdict(dict)
    last: dict[tuple[date, str], dict[int, int]] = defaultdict(dict)
    for kind, cohort, value, period, entities in rows:
        key = (_as_date(cohort), str(value))
        (on if kind == "on" else last)[key][int(period)] = int(entities)  # type: ignore[call-overload]
    zone = ZoneInfo(tz)
    out = []
    for key in sorted(last):
        latest = last[key]
        size = sum(latest.values())
        repeated = size - latest.get(-1, 0)
        cohort_periods = []
        for n in range(periods + 1):
            returned = on[key].get(n, 0)
            later = sum(c for p, c in latest.items() if p >= n)
            cohort_periods.append(
                Period(
                    n,
                    returned,
                    later,
                    _rate(returned, size),
                    _rate(later, size),
                    _ended(key[0], interval, n, zone, until),
                )
            )
        out.append(Cohort(key[0], key[1], size, repeated, _rate(repeated, size), cohort_periods))
    return out


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def totals(cohorts: Sequence[Cohort], periods: int) -> list[Total]:
    """Per breakdown value, over its cohorts: period N sums the cohorts whose period N is
    complete (none complete: the figures of all, marked incomplete)."""
    by_value: dict[str, list[Cohort]] = defaultdict(list)
    for c in cohorts:
        by_value[c.value].append(c)
    out = []
    for value, group in sorted(by_value.items()):
        size = sum(c.entities for c in group)
        repeated = sum(c.repeated for c in group)
        summed = []
        for n in range(periods + 1):
            done = [c for c in group if c.periods[n].complete]
            used = done or group
            base = sum(c.entities for c in used)
            returned = sum(c.periods[n].returned for c in used)
            later = sum(c.periods[n].returned_on_or_after for c in used)
            summed.append(
                Period(n, returned, later, _rate(returned, base), _rate(later, base), bool(done))
            )
        out.append(Total(value, size, repeated, _rate(repeated, size), summed))
    return out
