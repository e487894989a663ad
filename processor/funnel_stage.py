"""The funnel-stage machine: how far one visitor got in one funnel. Pure Python.

The rule (the same one the SQL report folds in ClickHouse, query_api/sql/funnel_report.py):

* Every event that matches step i yields an entry (timestamp, i). Events are taken in
  timestamp order; events with the same timestamp in funnel order (by the first step each
  matches), then by event id, so the result never depends on arrival order.
* An event's own entries are applied from its deepest matching step down, so one event
  advances a chain by at most one step (steps a, a, b: a single `a` reaches step 1 only;
  a second `a` reaches step 2).
* Step 1 (re)starts a chain at its timestamp. An entry for step i > 1 extends the chain
  held at step i-1 if it lies within `window` of that chain's start (inclusive).
* The level is the deepest step any chain reached; it never goes down.

For funnels whose steps no single event can match twice this is exactly ClickHouse's
`windowFunnel(window)` (default mode); the differential test checks it against the real
engine. ClickHouse's 'strict_once' mode tracks every partial path instead of the latest
chain per step, which can differ for overlapping steps; we keep one chain per step
because it is what the live processor can hold in constant memory.

Streaming with late events: entries newer than `horizon = newest timestamp - lateness`
stay pending and are re-sorted with each arrival; older ones are folded into a checkpoint.
An event older than the horizon cannot be placed exactly any more and is reported as too
late (it is still stored in the events table, so SQL reports include it).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Per step: (chain start ms, reached at ms, id of the event that filled it), or None.
Slot = tuple[int, int, str] | None


_LOW64 = (1 << 64) - 1


def uuid_order(event_id: str) -> int:
    """The event id as ClickHouse orders UUIDs: low 64 bits first, then high 64 bits."""
    try:
        # int(hex) is ~4x cheaper than uuid.UUID(...).int; ids are canonical once ingested.
        value = int(event_id.replace("-", ""), 16) if len(event_id) == 36 else -1
        if not 0 <= value < 1 << 128:
            raise ValueError(event_id)
    except ValueError:  # ids are UUIDs once ingested; keep tests with short ids working
        value = int.from_bytes(event_id.encode()[:16].ljust(16, b"\0"), "big")
    return ((value & _LOW64) << 64) | (value >> 64)


@dataclass(frozen=True, slots=True)
class Entry:
    timestamp_ms: int
    step: int
    event_id: str
    # The lowest step the same event matches: orders same-timestamp events.
    first_step: int
    # Tie-break between events with equal timestamp and first step (uuid_order).
    tie: int = field(default=0, compare=False, repr=False)

    def sort_key(self) -> tuple[int, int, int, int]:
        return (self.timestamp_ms, self.first_step, self.tie, -self.step)


def entries_for(timestamp_ms: int, event_id: str, steps: list[int]) -> list[Entry]:
    """One event's entries, in the order `fold` must see them (deepest step first)."""
    first = min(steps)
    tie = uuid_order(event_id)
    return [Entry(timestamp_ms, s, event_id, first, tie) for s in sorted(steps, reverse=True)]


def fold(slots: list[Slot], entries: list[Entry], window_ms: int) -> list[Slot]:
    """Apply sorted entries to a copy of `slots` (one per step)."""
    out = list(slots)
    for entry in entries:
        if entry.step == 0:
            out[0] = (entry.timestamp_ms, entry.timestamp_ms, entry.event_id)
            continue
        previous = out[entry.step - 1]
        if previous is None:
            continue
        started = previous[0]
        if entry.timestamp_ms <= started + window_ms:
            out[entry.step] = (started, entry.timestamp_ms, entry.event_id)
    return out


def level_of(slots: list[Slot]) -> int:
    for i in range(len(slots), 0, -1):
        if slots[i - 1] is not None:
            return i
    return 0


@dataclass(frozen=True, slots=True)
class Transition:
    step: int  # 1-based: the visitor now has `step` steps
    reached_at_ms: int
    chain_started_at_ms: int
    event_id: str


@dataclass(slots=True)
class FunnelProgress:
    """One visitor in one funnel."""

    steps: int
    checkpoint: list[Slot] = field(default_factory=list)
    pending: list[Entry] = field(default_factory=list)
    level: int = 0
    slots: list[Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.checkpoint:
            self.checkpoint = [None] * self.steps
        if not self.slots:
            self.slots = list(self.checkpoint)

    def add(self, entries: list[Entry], window_ms: int, horizon_ms: int) -> list[Transition]:
        """Add one event's entries; return the steps newly reached (in order)."""
        appended_in_order = not self.pending or (
            entries and entries[0].sort_key() >= self.pending[-1].sort_key()
        )
        for entry in entries:
            bisect.insort(self.pending, entry, key=Entry.sort_key)
        if appended_in_order:
            self.slots = fold(self.slots, entries, window_ms)
        else:
            self.slots = fold(self.checkpoint, self.pending, window_ms)
        self._advance_checkpoint(horizon_ms, window_ms)
        new_level = level_of(self.slots)
        transitions = []
        for step in range(self.level + 1, new_level + 1):
            slot = self.slots[step - 1]
            assert slot is not None
            transitions.append(Transition(step, slot[1], slot[0], slot[2]))
        self.level = max(self.level, new_level)
        return transitions

    def _advance_checkpoint(self, horizon_ms: int, window_ms: int) -> None:
        cut = 0
        while cut < len(self.pending) and self.pending[cut].timestamp_ms < horizon_ms:
            cut += 1
        if cut:
            self.checkpoint = fold(self.checkpoint, self.pending[:cut], window_ms)
            del self.pending[:cut]

    def to_json(self) -> dict[str, object]:
        return {
            "c": self.checkpoint,
            "p": [[e.timestamp_ms, e.step, e.event_id, e.first_step] for e in self.pending],
            "l": self.level,
            "s": self.slots,
        }

    @classmethod
    def from_json(cls, steps: int, doc: dict[str, object]) -> FunnelProgress:
        def slots(raw: object) -> list[Slot]:
            assert isinstance(raw, list)
            return [None if s is None else (int(s[0]), int(s[1]), str(s[2])) for s in raw]

        pending_raw = doc["p"]
        assert isinstance(pending_raw, list)
        level = doc["l"]
        assert isinstance(level, int)
        return cls(
            steps=steps,
            checkpoint=slots(doc["c"]),
            pending=[
                Entry(int(t), int(s), str(i), int(f), uuid_order(str(i)))
                for t, s, i, f in pending_raw
            ],
            level=level,
            slots=slots(doc["s"]),
        )


def reference_level(entries: list[Entry], steps: int, window_ms: int) -> int:
    """The batch answer over all of a visitor's entries (what windowFunnel computes)."""
    ordered = sorted(entries, key=Entry.sort_key)
    return level_of(fold([None] * steps, ordered, window_ms))
