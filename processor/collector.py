"""When Python's cyclic garbage collector runs in a process that runs the processor: every
few minutes, not on allocation counts.

The processor allocates tens of small objects per event and keeps many of them for a while
(every active visitor's state; the batch's rows until they are written). With the
collector on its default thresholds the passes these allocations trigger walked the
survivors again and again: a third of the fold's time (bench/RESULTS.md, the diagnostic
row). Collecting the young generations between steps instead still cost 10-13% (each
survivor is walked once more before it is promoted). The held state and the rows have
no reference cycles, so reference counting frees them; the collector is needed only for
the rare cycles of the rest of the process (asyncio, exceptions, the query API sharing
the loop). So while the processor runs, automatic collection is off and `after_step`
freezes what the steps allocated (`gc.freeze`: moved aside in constant time, never
walked, still freed by reference counting), and every `FULL_EVERY_SECONDS` unfreezes
and collects the whole heap, which bounds how long a cycle can hold its memory.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

FREEZE_EVERY_EVENTS = 2_000
FULL_EVERY_SECONDS = 300.0


@dataclass(slots=True)
class StepCollector:
    events: int = 0
    full_at: float = field(default_factory=time.monotonic)
    was_enabled: bool = True

    def start(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def stop(self) -> None:
        """Give the heap back to the collector as it was before `start`."""
        gc.unfreeze()
        if self.was_enabled:
            gc.enable()

    def after_step(self, events: int) -> None:
        """Called between processor steps, with the events the step applied."""
        self.events += events
        now = time.monotonic()
        if now - self.full_at >= FULL_EVERY_SECONDS:
            gc.unfreeze()
            gc.collect()
            self.full_at = now
            self.events = 0
        elif self.events >= FREEZE_EVERY_EVENTS:
            gc.freeze()
            self.events = 0
