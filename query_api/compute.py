"""Funnel arithmetic on per-level counts. Pure, so it is tested without ClickHouse."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class StepReport:
    index: int
    event: str
    name: str | None
    visitors: int
    conversion_from_start: float
    conversion_from_previous: float
    dropped: int
    median_seconds_from_start: float | None
    times: StepTimes | None = None
    in_progress: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "event": self.event,
            "name": self.name,
            "visitors": self.visitors,
            "conversion_from_start": self.conversion_from_start,
            "conversion_from_previous": self.conversion_from_previous,
            "dropped": self.dropped,
            "median_seconds_from_start": self.median_seconds_from_start,
            "in_progress": self.in_progress,
            "time_to_convert": None if self.times is None else self.times.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class StepTimes:
    """Seconds to reach a step, over the attempts holding it: from the attempt's step 1
    and from its previous step."""

    median_from_start: float
    p90_from_start: float
    avg_from_start: float
    median_from_previous: float
    p90_from_previous: float
    avg_from_previous: float

    @classmethod
    def from_ms(cls, values: list[float]) -> StepTimes:
        return cls(*(round(v / 1000, 3) for v in values))

    def as_dict(self) -> dict[str, float]:
        return {
            "median_from_start": self.median_from_start,
            "p90_from_start": self.p90_from_start,
            "avg_from_start": self.avg_from_start,
            "median_from_previous": self.median_from_previous,
            "p90_from_previous": self.p90_from_previous,
            "avg_from_previous": self.avg_from_previous,
        }


def reached_per_step(visitors_at_level: dict[int, int], steps: int) -> list[int]:
    """From 'how many visitors stopped at level L' to 'how many reached step k' (cumulative)."""
    reached = [0] * steps
    for level, count in visitors_at_level.items():
        for k in range(min(level, steps)):
            reached[k] += count
    return reached


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def build_steps(
    events: list[str],
    names: list[str | None],
    reached: list[int],
    medians_ms: list[float | None],
    times: list[StepTimes | None] | None = None,
    in_progress: list[int] | None = None,
) -> list[StepReport]:
    out = []
    for k, count in enumerate(reached):
        previous = reached[k - 1] if k else count
        following = reached[k + 1] if k + 1 < len(reached) else count
        median = medians_ms[k]
        waiting = in_progress[k] if in_progress else 0
        out.append(
            StepReport(
                index=k,
                event=events[k],
                name=names[k],
                visitors=count,
                conversion_from_start=_ratio(count, reached[0]),
                conversion_from_previous=_ratio(count, previous),
                # Dropped here = reached this step but not the next, and can no longer
                # take it (its window expired); 0 at the last step.
                dropped=count - following - waiting if k + 1 < len(reached) else 0,
                median_seconds_from_start=None if median is None else median / 1000,
                times=times[k] if times else None,
                in_progress=waiting,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ReportRows:
    reached: list[int]
    medians_ms: list[float | None]
    times: list[StepTimes | None]
    in_progress: list[int]


def steps_from_rows(rows: list[tuple[Any, ...]], steps: int) -> ReportRows:
    """Report rows (step 1-based, entities, 6 times in ms, in progress) → per-step lists;
    steps no entity reached get 0 and None."""
    reached = [0] * steps
    medians: list[float | None] = [None] * steps
    times: list[StepTimes | None] = [None] * steps
    waiting = [0] * steps
    for step, entities, *ms, in_progress in rows:
        k = int(step) - 1
        reached[k] = int(entities)
        waiting[k] = int(in_progress)
        values = [float(v) for v in ms]
        if reached[k] and not any(math.isnan(v) for v in values):
            medians[k] = values[0]
            times[k] = StepTimes.from_ms(values)
    return ReportRows(reached, medians, times, waiting)


TREND_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400}


@dataclass(frozen=True, slots=True)
class TrendPoint:
    bucket: datetime
    entered: int
    converted: int
    conversion: float
    # The period is not over (or reaches past the report's end): its numbers will change.
    incomplete: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "bucket": self.bucket,
            "entered": self.entered,
            "converted": self.converted,
            "conversion": self.conversion,
            "incomplete": self.incomplete,
        }


def trend_points(
    rows: list[tuple[Any, ...]], interval: str, end: datetime, now: datetime, tz: str = "UTC"
) -> list[TrendPoint]:
    """Rows (bucket start in Unix seconds, entered, converted) → points whose bucket is the
    local start in `tz` (with its UTC offset). A bucket ends at the next local midnight
    (wall-clock arithmetic, so a DST day is 23 or 25 hours long); an hour is 3600 s."""
    zone = ZoneInfo(tz)
    cutoff = min(end, now)
    out = []
    for seconds, entered, converted in rows:
        start = datetime.fromtimestamp(int(seconds), zone)
        if interval == "hour":
            until = start.astimezone(UTC) + timedelta(hours=1)
        else:
            until = start + timedelta(days=TREND_SECONDS[interval] // 86400)
        out.append(
            TrendPoint(
                bucket=start,
                entered=int(entered),
                converted=int(converted),
                conversion=_ratio(int(converted), int(entered)),
                incomplete=until > cutoff,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class BreakdownGroup:
    """Entities of one attributed value (or of all values past the top N: `other`)."""

    value: str
    other: bool
    reached: list[int]

    def as_dict(self) -> dict[str, object]:
        return {
            "value": self.value,
            "other": self.other,
            "steps": [
                {
                    "index": k,
                    "visitors": count,
                    "conversion_from_start": _ratio(count, self.reached[0]),
                    "conversion_from_previous": _ratio(count, self.reached[k - 1] if k else count),
                }
                for k, count in enumerate(self.reached)
            ],
        }


def breakdown_groups(rows: list[tuple[Any, ...]], steps: int) -> list[BreakdownGroup]:
    """Rows (top, value, level, entities) → groups, biggest first (ties: by value), the
    `other` group (all values past the top N) last."""
    at_level: dict[tuple[bool, str], dict[int, int]] = {}
    for top, value, level, entities in rows:
        key = (not bool(top), str(value) if top else "")
        at_level.setdefault(key, {})[int(level)] = int(entities)
    groups = [
        BreakdownGroup(value, other, reached_per_step(levels, steps))
        for (other, value), levels in at_level.items()
    ]
    return sorted(groups, key=lambda g: (g.other, -g.reached[0], g.value))


@dataclass(frozen=True, slots=True)
class HistogramBin:
    start_seconds: float
    end_seconds: float
    attempts: int

    def as_dict(self) -> dict[str, object]:
        return {
            "from_seconds": self.start_seconds,
            "to_seconds": self.end_seconds,
            "attempts": self.attempts,
        }


def histogram_bins(rows: list[tuple[Any, ...]], bins: int) -> list[HistogramBin]:
    """Rows (bin, attempts, bin start ms, bin width ms) → all `bins` bins, empty ones
    included, as [from, to) seconds."""
    if not rows:
        return []
    width = int(rows[0][3])
    counts = {int(b): int(n) for b, n, _, _ in rows}
    return [
        HistogramBin(b * width / 1000, (b + 1) * width / 1000, counts.get(b, 0))
        for b in range(bins)
    ]


@dataclass(frozen=True, slots=True)
class StepChange:
    """One step of a report against the same step in a comparison period: the change in
    entities and in conversion from step 1, absolute (this minus the other) and relative
    (over the other; None where the other is 0)."""

    index: int
    visitors: int
    compare_visitors: int
    visitors_change: int
    visitors_change_relative: float | None
    conversion_from_start: float
    compare_conversion_from_start: float
    conversion_change: float
    conversion_change_relative: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _relative(change: float, base: float) -> float | None:
    return round(change / base, 6) if base else None


def step_changes(current: list[int], other: list[int]) -> list[StepChange]:
    """Per step, entities reaching it in this period and in the other (same steps)."""
    out = []
    for k, (now, then) in enumerate(zip(current, other, strict=True)):
        rate, rate_then = _ratio(now, current[0]), _ratio(then, other[0])
        out.append(
            StepChange(
                index=k,
                visitors=now,
                compare_visitors=then,
                visitors_change=now - then,
                visitors_change_relative=_relative(now - then, then),
                conversion_from_start=rate,
                compare_conversion_from_start=rate_then,
                conversion_change=round(rate - rate_then, 6),
                conversion_change_relative=_relative(rate - rate_then, rate_then),
            )
        )
    return out
