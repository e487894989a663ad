"""When Python's cyclic garbage collector runs in a process that runs the processor: between
steps, not on allocation counts.

The processor allocates tens of small objects per event and keeps some of them (every
active visitor's state). With the collector on its default thresholds, the passes these
allocations trigger walked the young survivors again and again and cost the fold about a
third of its time (bench/RESULTS.md, the diagnostic row; a side check with a million
other objects held, as in `serve`: 15k ev/s with raised thresholds, 22k with the
collector off). Held state has no reference cycles, so reference counting frees it; the
collector is needed only for the rare cycles of the rest of the process (asyncio,
exceptions, the query API sharing the loop). So automatic collection is switched off
while the processor runs, and `after_step` collects the young generations once enough
events went by or a second passed (survivors are walked once, then promoted), and the
whole heap every few minutes, which bounds how long any cycle can hold memory.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

# Young collection after this many events or seconds (whichever first): measured, 2,000
# events per collection cost the fold ~2% against ~10% at 10,000.
YOUNG_EVERY_EVENTS = 2_000
YOUNG_EVERY_SECONDS = 1.0
FULL_EVERY_SECONDS = 300.0


@dataclass(slots=True)
class StepCollector:
    events: int = 0
    young_at: float = field(default_factory=time.monotonic)
    full_at: float = field(default_factory=time.monotonic)
    was_enabled: bool = True

    def start(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def stop(self) -> None:
        if self.was_enabled:
            gc.enable()

    def after_step(self, events: int) -> None:
        """Called between processor steps, with the events the step applied."""
        self.events += events
        now = time.monotonic()
        if now - self.full_at >= FULL_EVERY_SECONDS:
            gc.collect()
            self.full_at = self.young_at = now
            self.events = 0
        elif self.events >= YOUNG_EVERY_EVENTS or now - self.young_at >= YOUNG_EVERY_SECONDS:
            gc.collect(1)
            self.young_at = now
            self.events = 0
