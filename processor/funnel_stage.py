"""The funnel-stage machine: how far one visitor got in one funnel. Pure Python.

Semantics are pinned to ClickHouse `windowFunnel(window, 'strict_once')` over the
visitor's events, so the live state and a retroactive SQL report agree exactly (a
differential test checks this against the real engine):

* Every event that matches step i yields an entry (timestamp, i). Entries are processed
  in (timestamp, step) order, so events with the same timestamp count in funnel order.
* Step 1 (re)starts a chain at its timestamp. An entry for step i > 1 extends the chain
  held at step i-1 if it lies within `window` of that chain's start (inclusive), and the
  entry is not the very event that filled step i-1 (one event advances a chain by at most
  one step: 'strict_once').
* The level is the deepest step any chain reached; it never goes down.

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


@dataclass(frozen=True, slots=True)
class Entry:
    timestamp_ms: int
    step: int
    event_id: str

    def sort_key(self) -> tuple[int, int, str]:
        return (self.timestamp_ms, self.step, self.event_id)


def fold(slots: list[Slot], entries: list[Entry], window_ms: int) -> list[Slot]:
    """Apply sorted entries to a copy of `slots` (one per step)."""
    out = list(slots)
    for entry in entries:
        if entry.step == 0:
            out[0] = (entry.timestamp_ms, entry.timestamp_ms, entry.event_id)
            continue
        previous = out[entry.step - 1]
        if previous is None or previous[2] == entry.event_id:
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

    def add(
        self, entries: list[Entry], window_ms: int, horizon_ms: int
    ) -> list[Transition]:
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
            "p": [[e.timestamp_ms, e.step, e.event_id] for e in self.pending],
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
            pending=[Entry(int(t), int(s), str(i)) for t, s, i in pending_raw],
            level=level,
            slots=slots(doc["s"]),
        )


def reference_level(entries: list[Entry], steps: int, window_ms: int) -> int:
    """The batch answer over all of a visitor's entries (what windowFunnel computes)."""
    ordered = sorted(entries, key=Entry.sort_key)
    return level_of(fold([None] * steps, ordered, window_ms))
