"""When Python's cyclic garbage collector runs in a process that runs the processor.

The processor allocates tens of small objects per event and keeps many of them for a while
(every active visitor's state; the batch's rows until they are written). With the
collector on its default thresholds the passes these allocations trigger walked the
survivors again and again: a third of the fold's time (bench/RESULTS.md, the diagnostic
row); collecting the young generations between steps still cost 10-20% (each survivor is
walked once more before it is promoted). What the fold allocates has no reference cycles:
reference counting frees it. Cycles come from the I/O around it (the ClickHouse client,
the log consumer, asyncio's futures): freezing everything (`gc.freeze`) without
collecting held ~20 MB/s of them until the next full collection.

So while the processor runs, automatic collection is off and each I/O call is bracketed
(`io`): before it, what exists is frozen (constant time: moved aside, never walked, still
freed by reference counting); after it, the youngest generation, which then holds only
what the call allocated, is collected. A step that found nothing to do collects the
young generations (cheap when idle: the query API's garbage). Every `FULL_EVERY_SECONDS`
the heap is unfrozen and collected whole, which bounds how long any other cycle (one
made by the query API sharing the loop while the processor folds) holds its memory.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

FULL_EVERY_SECONDS = 300.0


@dataclass(slots=True)
class StepCollector:
    full_at: float = field(default_factory=time.monotonic)
    was_enabled: bool = True
    active: bool = False

    def start(self) -> None:
        self.was_enabled = gc.isenabled()
        self.active = True
        gc.disable()

    def stop(self) -> None:
        """Give the heap back to the collector as it was before `start`."""
        if not self.active:
            return
        self.active = False
        gc.unfreeze()
        if self.was_enabled:
            gc.enable()

    @contextmanager
    def io(self) -> Iterator[None]:
        """Bracket one I/O call: its cyclic garbage is collected right after it, without
        walking what the fold allocated before it."""
        if not self.active:
            yield
            return
        gc.freeze()
        try:
            yield
        finally:
            gc.collect(0)

    def after_step(self, events: int) -> None:
        """Called between processor steps, with the events the step applied."""
        if not self.active:
            return
        now = time.monotonic()
        if now - self.full_at >= FULL_EVERY_SECONDS:
            gc.unfreeze()
            gc.collect()
            self.full_at = now
        elif events == 0:
            gc.collect(1)
