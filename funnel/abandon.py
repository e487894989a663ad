"""The abandoned-stage timer rule: when "reached step k and not a later step within T"
fires. Pure Python: no clock, no I/O; the processor (not yet wired) feeds it each visitor's
slots after an event and its watermark, and delivers what `due` returns.

The rule, for a trigger on stage k (0-based) of a funnel with delay T:

* An attempt is the one held at slot k after an event (funnel/fold.py: slot k holds the
  latest attempt that reached step k); it is named by its start, which later slots of the
  same attempt copy. It *converted* when a deeper slot holds the same start.
* T runs from the event time the attempt reached step k (`reached`): the deadline is
  `reached + T`. It is judged against the watermark, the newest event time the processor
  has seen, never the wall clock, so a replay decides as the first run did.
* Only live attempts are armed: the event that reached step k was received (ingest's
  `received_at`) before its deadline. History arriving through an import, a backfill or a
  re-fold is received long after its deadline and arms nothing, so nothing fires for the
  past.
* An armed attempt fires once, when the watermark reaches its deadline, unless it
  converted first (a late event that shows the conversion cancels it too, while it is
  pending). One already fired is not recalled. A visitor who comes back starts a new
  attempt (a new start at slot 0), which may fire again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from funnel.fold import Slot


@dataclass(frozen=True, slots=True)
class AbandonRule:
    funnel_id: str
    stage: int  # 0-based; not the funnel's last step
    after_ms: int


@dataclass(frozen=True, slots=True)
class Due:
    """A fired trigger: the visitor's attempt started at `started_ms` reached the stage at
    `reached_ms` and took no later step by `deadline_ms`."""

    visitor_id: str
    started_ms: int
    reached_ms: int
    deadline_ms: int


@dataclass(slots=True)
class AbandonTimers:
    """One rule's timers: pending attempts by (visitor, start), and the attempts already
    fired or judged (converted, or history), which are never armed again. (Wiring this
    into the processor must also drop settled keys once their attempt is older than the
    funnel's window, and keep both sets in the stored visitor state.)"""

    rule: AbandonRule
    pending: dict[tuple[str, int], Due] = field(default_factory=dict)
    settled: set[tuple[str, int]] = field(default_factory=set)

    def observe(self, visitor_id: str, slots: list[Slot], received_ms: int) -> None:
        """After an event of the visitor (received at `received_ms`) left it with `slots`:
        arm its attempt at the stage, or cancel it when a deeper step of it is held."""
        k = self.rule.stage
        for deeper in slots[k + 1 :]:
            if deeper is None:
                continue
            key = (visitor_id, deeper[0])
            self.pending.pop(key, None)
            self.settled.add(key)
        held = slots[k]
        if held is None:
            return
        key = (visitor_id, held[0])
        if key in self.pending or key in self.settled:
            return
        deadline = held[1] + self.rule.after_ms
        if received_ms >= deadline:
            self.settled.add(key)  # history: its time passed before it arrived
            return
        self.pending[key] = Due(visitor_id, held[0], held[1], deadline)

    def due(self, watermark_ms: int) -> list[Due]:
        """The pending attempts whose deadline the watermark reached, oldest first; they
        are settled and never returned again."""
        fired = sorted(
            (d for d in self.pending.values() if d.deadline_ms <= watermark_ms),
            key=lambda d: (d.deadline_ms, d.visitor_id, d.started_ms),
        )
        for d in fired:
            key = (d.visitor_id, d.started_ms)
            del self.pending[key]
            self.settled.add(key)
        return fired
