"""How often Python's cyclic garbage collector walks the processor's held state.

The processor holds every active visitor's state (lists, tuples, small objects: tens of
them per visitor) and replaces parts of it on every event. With the default thresholds a
full collection runs each time the objects promoted to the oldest generation grow by a
quarter, and each one walks every held visitor: with 10,000 visitors held the fold ran
2.2x slower than with the collector off (bench/RESULTS.md, the diagnostic row). The held
state has no reference cycles, so reference counting frees it; the collector is only
needed for the rare cycles of the rest of the process (asyncio, exceptions). A full
collection at most every 100 middle-generation ones bounds how long such a cycle waits.
"""

from __future__ import annotations

import gc

# (young, middle, old): the defaults are (700, 10, 10).
THRESHOLDS = (700, 10, 100)


def tune_collector() -> None:
    """Set the thresholds for the process; idempotent (the processor calls it on start)."""
    gc.set_threshold(*THRESHOLDS)
