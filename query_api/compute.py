"""Funnel arithmetic on per-level counts. Pure, so it is tested without ClickHouse."""

from __future__ import annotations

from dataclasses import dataclass


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
) -> list[StepReport]:
    out = []
    for k, count in enumerate(reached):
        previous = reached[k - 1] if k else count
        following = reached[k + 1] if k + 1 < len(reached) else count
        median = medians_ms[k]
        out.append(
            StepReport(
                index=k,
                event=events[k],
                name=names[k],
                visitors=count,
                conversion_from_start=_ratio(count, reached[0]),
                conversion_from_previous=_ratio(count, previous),
                # Dropped here = reached this step but not the next (0 at the last step).
                dropped=count - following if k + 1 < len(reached) else 0,
                median_seconds_from_start=None if median is None else median / 1000,
            )
        )
    return out
