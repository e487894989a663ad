"""The funnel-stage machine: how far one visitor got in one funnel. Pure Python.

The rule (the same one the SQL report folds in ClickHouse, funnel/sql/report.py, and the
test oracle states in plain Python, tests/oracle/funnel_reference.py):

* Every event that matches step i yields an entry (timestamp, i); an event that matches
  exclusion x yields an exclusion entry; in strict order an event matching nothing yields
  one "other" entry. Entries are taken in timestamp order; at the same timestamp events
  that match an exclusion (or nothing) first, then in funnel order (by the first step each
  matches), then by event id, so the result never depends on arrival order.
* An event's own entries are applied exclusions first, then from its deepest matching step
  down, so one event advances an attempt by at most one step (steps a, a, b: a single `a`
  reaches step 1 only; a second `a` reaches step 2).
* One slot per step holds the latest attempt that reached it: (started, reached, event id).
  Step 1 (re)starts an attempt. An entry for step k > 1 extends the attempt held at step
  k-1 (or, past optional steps, an earlier one: the latest start wins, ties the deepest) if
  it lies within `window` of the attempt's start and within step k's own window of the
  attempt's previous step (both inclusive); in strict order only if the event that filled
  that slot is the visitor's event right before this one.
* An exclusion for steps [i, j) empties every slot of each attempt whose deepest slot is
  at least i and below j. A later clean attempt counts again.
* The level is the deepest held slot. It can go down: after an exclusion, or when a late
  event (strict order: any event) lands between two steps already folded.
* Any order (`order: "any"`, `_fold_any`): the level is the most distinct steps within
  one window, found from the latest event of each step; slots then record the attempt
  that first reached each level, not the latest one.
* By session (`count_by: "session"`, `_fold_sessions`): every event of the visitor is
  read, and a gap of the session gap or more between two of them (30 minutes by default,
  `FUNNELSTREAM_SESSION_GAP_SECONDS`, the report's rule too) closes the session: its
  reached steps are counted per step and its slots emptied, so the level is the open
  session's. A late event filling a gap merges the two sessions again.

For funnels whose steps no single event can match twice, without the options above, this
is exactly ClickHouse's `windowFunnel(window)` (default mode); the differential test
checks it against the real engine, and another checks every option against the
reference. ClickHouse's 'strict_once' mode tracks every partial path instead of the
latest attempt per step, which can differ for overlapping steps; we keep one attempt per
step because it is what the live processor can hold in constant memory.

Counting total attempts (`counting: "total"`): slot k's start never decreases (slot 0
holds the newest step-1 event, slot k copies slot k-1's start), so "a new attempt reached
step k" is "slot k's start grew", and a counter per step replaces a set of starts.

Streaming with late events: entries newer than `horizon = newest timestamp - lateness`
stay pending and are re-sorted with each arrival; older ones are folded into a checkpoint.
An arrival that lands between pending events re-folds them from the checkpoint as
in-order arrival would have, and corrects the transitions already emitted
(`FunnelProgress._refold_pending`). An event older than the horizon cannot be placed from
the state: the processor re-folds its visitor from the stored events (processor/refold.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Per step: (attempt start ms, reached at ms, id of the event that filled it), or None.
Slot = tuple[int, int, str] | None

# Entry.step values below 0: an event matching nothing (strict order only), and
# exclusion x as EXCLUSION + x, which sorts before any step entry of the same event.
OTHER = -1
EXCLUSION = -(1 << 16)

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


# Not frozen: a frozen dataclass's __init__ costs 4x a plain one's, and entries are made
# per event and funnel. Nothing assigns their fields after construction.
@dataclass(slots=True, unsafe_hash=True)
class Entry:
    timestamp_ms: int
    step: int
    event_id: str
    # The lowest step the same event matches (-1: an exclusion or nothing): orders
    # same-timestamp events.
    first_step: int
    # Tie-break between events with equal timestamp and first step (uuid_order).
    tie: int = field(default=0, compare=False, repr=False)

    def sort_key(self) -> tuple[int, int, int, int]:
        # Within one event: exclusions (ascending x), then steps deepest first.
        within = self.step if self.step < 0 else -self.step
        return (self.timestamp_ms, self.first_step, self.tie, within)


@dataclass(slots=True, unsafe_hash=True)
class HeldEntry(Entry):
    """An entry of a funnel counted by session with a held property: it carries the
    event's value of that property (`_fold_held` splits a session's entries by it). A
    subclass, so the entries of every other funnel stay as small and cheap to build."""

    value: str = field(default="", compare=False)


def entries_for(
    timestamp_ms: int,
    event_id: str,
    steps: list[int],
    exclusions: list[int] | None = None,
    *,
    other: bool = False,
    value: str | None = None,
    tie: int | None = None,
) -> list[Entry]:
    """One event's entries, in the order `fold` must see them. `other`: an event that
    matches nothing still gets an entry (strict order reads every event). `value`: the
    held property's value, carried by each entry (sessions with a held property). `tie`:
    the event's `uuid_order`, when the caller computed it once for all funnels."""
    excluded = exclusions or []
    if not steps and not excluded and not other:
        return []
    tie = uuid_order(event_id) if tie is None else tie
    if value is None and not excluded and len(steps) == 1:  # the usual case, made short
        return [Entry(timestamp_ms, steps[0], event_id, steps[0], tie)]
    if not steps and not excluded:
        entries = [Entry(timestamp_ms, OTHER, event_id, -1, tie)]
    else:
        first = -1 if excluded else min(steps)
        entries = [
            Entry(timestamp_ms, EXCLUSION + x, event_id, first, tie) for x in sorted(excluded)
        ]
        entries += [
            Entry(timestamp_ms, s, event_id, first, tie) for s in sorted(steps, reverse=True)
        ]
    if value is None:
        return entries
    return [
        HeldEntry(e.timestamp_ms, e.step, e.event_id, e.first_step, e.tie, value) for e in entries
    ]


@dataclass(frozen=True, slots=True)
class FoldRule:
    """What `fold` needs of a funnel definition, in milliseconds and step indexes."""

    steps: int
    window_ms: int
    # Per step: max time from the previous step of the attempt (None: only the window).
    step_windows_ms: tuple[int | None, ...] = ()
    # Per step k > 0: the slots an entry of step k may extend (k-1, then past optional
    # steps); empty for step 0.
    sources: tuple[tuple[int, ...], ...] = ()
    # Per exclusion: the [lo, hi) range of attempt depths it discards.
    exclusions: tuple[tuple[int, int], ...] = ()
    strict: bool = False
    count_attempts: bool = False
    # order "any": levels from the latest event of each step, not slots (see `_fold_any`).
    any_order: bool = False
    # count_by "session": a gap this long between two events of the visitor starts a new
    # session, and so new attempts (see `_fold_sessions`). None: one entity per visitor.
    session_gap_ms: int | None = None
    # count_by "session" with hold_property: inside a session, each held value (carried by
    # the entries) has its own attempts, folded apart (see `_fold_held`).
    held: bool = False
    # Neither of the two above: `fold_state` goes straight to the ordered fold (the
    # default funnel's hot path checks one flag).
    plain: bool = field(init=False, default=True)

    @property
    def reads_every_event(self) -> bool:
        """Strict order and sessions read every event: one matching nothing still breaks
        a strict chain, or ends a session by its gap."""
        return self.strict or self.session_gap_ms is not None

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", not self.any_order and self.session_gap_ms is None)
        if not self.step_windows_ms:
            object.__setattr__(self, "step_windows_ms", (None,) * self.steps)
        if not self.sources:
            plain = ((),) + tuple((k - 1,) for k in range(1, self.steps))
            object.__setattr__(self, "sources", plain)


@dataclass(slots=True)
class Folded:
    """Slots after some entries, with what strict order and total counting carry along."""

    slots: list[Slot]
    # The last event folded (strict order: the only one a next step may follow).
    tail: str = ""
    # Per step, attempts that reached it (`FoldRule.count_attempts`), else empty.
    attempts: list[int] = field(default_factory=list)
    # order "any": per step, its latest event as (ts, ts, event id), else empty.
    latest: list[Slot] = field(default_factory=list)
    # count_by "session": the last event's timestamp, and per step the visitor's earlier
    # (closed) sessions that reached it; else None and empty.
    last_ms: int | None = None
    sessions: list[int] = field(default_factory=list)
    # `FoldRule.held`: the open session's slots per held value (`slots` is then, per step,
    # the latest attempt among them); else empty.
    values: dict[str, list[Slot]] | None = None

    @classmethod
    def empty(cls, rule: FoldRule) -> Folded:
        return cls(
            [None] * rule.steps,
            "",
            [0] * rule.steps if rule.count_attempts else [],
            [None] * rule.steps if rule.any_order else [],
            None,
            [0] * rule.steps if rule.session_gap_ms is not None else [],
        )

    def copy(self) -> Folded:
        return Folded(
            self.slots.copy(),
            self.tail,
            self.attempts.copy(),
            self.latest.copy(),
            self.last_ms,
            self.sessions.copy(),
            {v: slots.copy() for v, slots in self.values.items()} if self.values else None,
        )


def _discard(slots: list[Slot], lo: int, hi: int) -> list[Slot]:
    """Empty the slots of every attempt whose deepest slot is in [lo, hi)."""
    depth: dict[int, int] = {}
    for k, s in enumerate(slots):
        if s is not None:
            depth[s[0]] = k  # attempts are told apart by their start
    return [None if s is not None and lo <= depth[s[0]] < hi else s for s in slots]


def fold_state(
    state: Folded, entries: list[Entry], rule: FoldRule, *, in_place: bool = False
) -> Folded:
    """Apply sorted entries to a copy of `state` (`in_place`: to `state` itself, for an
    owner that replaces its state with the result anyway: the copy was a third of the
    live fold's cost)."""
    out = state if in_place else state.copy()
    if rule.plain:
        _fold_ordered(out, entries, rule)
    elif rule.session_gap_ms is not None:
        _fold_sessions(out, entries, rule)
    else:
        _fold_any(out, entries, rule)
    return out


def _fold_sessions(out: Folded, entries: list[Entry], rule: FoldRule) -> None:
    """count_by "session": fold each session's entries apart. Every event of the visitor
    has an entry (events matching nothing included), so the gaps between entries are the
    gaps between the visitor's events. At a gap of `session_gap_ms` or more the session
    closes: the steps it reached are added to `sessions` and its slots emptied.

    A late event can fill a gap and merge two sessions; since closing is decided here,
    while folding, re-folding the pending entries from the checkpoint gets that right for
    any gap that ends after the horizon (one that ends before it can no longer be filled:
    an event landing inside it would be too late)."""
    if not out.sessions:
        out.sessions = [0] * rule.steps
    gap = rule.session_gap_ms
    assert gap is not None
    inner = _fold_any if rule.any_order else _fold_held if rule.held else _fold_ordered
    start = 0
    for i, entry in enumerate(entries):
        ts = entry.timestamp_ms
        if out.last_ms is not None and ts - out.last_ms >= gap:
            inner(out, entries[start:i], rule)
            start = i
            for k in range(level_of(out.slots)):
                out.sessions[k] += 1
            out.slots = [None] * rule.steps
            out.latest = []
            out.values = None
        out.last_ms = ts
    inner(out, entries[start:], rule)


def _fold_held(out: Folded, entries: list[Entry], rule: FoldRule) -> None:
    """A held property inside one session: each value's entries fold on their own slots
    (values never interact), and per step the attempt with the greatest (start, reached,
    value) among the values holding it is the entity's, as the reference picks it."""
    values = out.values = out.values or {}
    by_value: dict[str, list[Entry]] = {}
    for entry in entries:
        by_value.setdefault(entry.value if isinstance(entry, HeldEntry) else "", []).append(entry)
    for value, own in by_value.items():
        one = Folded(values.get(value) or [None] * rule.steps)
        _fold_ordered(one, own, rule)
        values[value] = one.slots
    merged: list[Slot] = []
    for k in range(rule.steps):
        held = [(s[0], s[1], v, s) for v, slots in values.items() if (s := slots[k])]
        merged.append(max(held)[3] if held else None)
    out.slots = merged


def _fold_ordered(out: Folded, entries: list[Entry], rule: FoldRule) -> None:
    """Ordered and strict funnels, one entity: the rule in the module docstring."""
    slots, attempts = out.slots, out.attempts
    window = rule.window_ms
    current = previous = out.tail
    for entry in entries:
        if entry.event_id != current:
            previous, current = current, entry.event_id
        step, ts = entry.step, entry.timestamp_ms
        if step < 0:
            if step != OTHER:
                slots[:] = _discard(slots, *rule.exclusions[step - EXCLUSION])
            continue
        if step == 0:
            new: tuple[int, int, str] = (ts, ts, entry.event_id)
        else:
            best: tuple[int, int, str] | None = None
            limit = rule.step_windows_ms[step]
            for j in rule.sources[step]:
                held = slots[j]
                if held is None or ts > held[0] + window:
                    continue
                if limit is not None and ts > held[1] + limit:
                    continue
                if rule.strict and held[2] != previous:
                    continue
                # Sources run from the deepest: only a strictly later start replaces it.
                if best is None or held[0] > best[0]:
                    best = held
            if best is None:
                continue
            new = (best[0], ts, entry.event_id)
        if attempts:
            old = slots[step]
            if old is None or old[0] < new[0]:
                attempts[step] += 1
        slots[step] = new
    out.tail = current


def _fold_any(out: Folded, entries: list[Entry], rule: FoldRule) -> None:
    """order "any": the deepest level is the most distinct steps any attempt takes.

    An attempt starting at event a covers the step events from a to a + window; sliding
    its window right until it ends at an event never loses one, so the best attempt is
    found among windows [t - window, t] ending at each event t, in fold order. Those
    count the steps whose latest event so far is at or after t - window: one timestamp
    per step is the whole state. Moving the window to the next event adds at most that
    event's step, so each entry raises the level by at most one, and the attempt that
    does it (from the oldest of those latest events) takes its new step at this entry.
    Slots record, per level, the attempt that first reached it (the reference's slots
    hold the latest such attempt, which needs the events of a whole window).
    """
    slots = out.slots
    if not out.latest:
        out.latest = [None] * rule.steps
    latest, window = out.latest, rule.window_ms
    level = level_of(slots)
    for entry in entries:
        if entry.step < 0:  # any order has no exclusions nor strict "other" entries
            continue
        ts = entry.timestamp_ms
        latest[entry.step] = (ts, ts, entry.event_id)
        starts = [s[0] for s in latest if s is not None and s[0] >= ts - window]
        while level < len(starts):
            level += 1
            slots[level - 1] = (min(starts), ts, entry.event_id)


def fold(slots: list[Slot], entries: list[Entry], rule: FoldRule) -> list[Slot]:
    """The slots after applying sorted entries to a copy of `slots`."""
    return fold_state(Folded(list(slots)), entries, rule).slots


def level_of(slots: list[Slot]) -> int:
    for i in range(len(slots), 0, -1):
        if slots[i - 1] is not None:
            return i
    return 0


@dataclass(slots=True, unsafe_hash=True)
class Transition:
    step: int  # 1-based: the visitor now has `step` steps
    reached_at_ms: int
    chain_started_at_ms: int
    event_id: str
    # "reached": made as the event arrived; "retracted": one made before that a late event
    # shows never happened in timestamp order; "corrected": the one made instead.
    kind: str = field(default="reached", compare=False)

    def as_kind(self, kind: str) -> Transition:
        return Transition(
            self.step, self.reached_at_ms, self.chain_started_at_ms, self.event_id, kind
        )

    def same(self, other: Transition) -> bool:
        return (self.reached_at_ms, self.chain_started_at_ms, self.event_id) == (
            other.reached_at_ms,
            other.chain_started_at_ms,
            other.event_id,
        )


def _transition_of(raw: object) -> Transition:
    assert isinstance(raw, list)
    step, reached, started, event_id = raw
    return Transition(int(step), int(reached), int(started), str(event_id))


def _slots_of(raw: object) -> list[Slot]:
    assert isinstance(raw, list)
    return [None if s is None else (int(s[0]), int(s[1]), str(s[2])) for s in raw]


@dataclass(slots=True)
class FunnelProgress:
    """One visitor in one funnel: a checkpoint, the entries still pending (newer than the
    horizon, re-sorted on late arrivals) and the state after both (`current`).

    With `hold_property` (`by_value` set) attempts are made of events sharing the
    property's value: one FunnelProgress per value, and the visitor's level is the deepest
    any value reached. A value whose attempts can no longer move (its newest start is
    older than the window before the horizon) is dropped, keeping only its level
    (`retired_level`), so memory follows the values seen within a window, not all time.
    """

    steps: int
    checkpoint: Folded = field(default_factory=lambda: Folded([]))
    pending: list[Entry] = field(default_factory=list)
    level: int = 0
    current: Folded = field(default_factory=lambda: Folded([]))
    by_value: dict[str, FunnelProgress] | None = None
    retired_level: int = 0
    # The transitions table's row per step as of the checkpoint (`marks`), and what was
    # emitted since, with the timestamp of the event that emitted it (`emitted`): a
    # re-sort of pending entries re-emits from the checkpoint in timestamp order and
    # corrects the difference, so the table ends as in-order arrival leaves it.
    marks: dict[int, Transition] = field(default_factory=dict)
    emitted: list[tuple[int, Transition]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.checkpoint.slots:
            self.checkpoint = Folded([None] * self.steps)
        if not self.current.slots:
            self.current = self.checkpoint.copy()

    @property
    def slots(self) -> list[Slot]:
        if self.by_value is None:
            return self.current.slots
        # Per step, the value whose attempt holding it is the latest (as the reference).
        out: list[Slot] = []
        for k in range(self.steps):
            held = [(s[0], s[1], v, s) for v, p in self.by_value.items() if (s := p.slots[k])]
            out.append(max(held)[3] if held else None)
        return out

    @property
    def attempts(self) -> list[int]:
        """Per step, what the report counts when it counts more than the visitor: attempts
        (`counting: "total"`) or sessions (`count_by: "session"`, the open one included);
        empty otherwise."""
        now = self.current
        if now.attempts or not now.sessions:
            return now.attempts
        level = level_of(now.slots)
        return [n + (k < level) for k, n in enumerate(now.sessions)]

    def add(
        self, entries: list[Entry], rule: FoldRule, horizon_ms: int, value: str | None = None
    ) -> list[Transition]:
        """Add one event's entries (with `value`: of the held property); return the steps
        newly reached (in order)."""
        if value is not None:
            return self._add_held(value, entries, rule, horizon_ms)
        if rule.count_attempts and not self.checkpoint.attempts:
            self.checkpoint.attempts = [0] * self.steps
            self.current.attempts = [0] * self.steps
        appended_in_order = not self.pending or (
            entries and entries[0].sort_key() >= self.pending[-1].sort_key()
        )
        if appended_in_order:
            # One event's entries are sorted among themselves (`entries_for`).
            self.pending.extend(entries)
            transitions = self._fold_in(entries, rule)
            if transitions:
                ts = entries[0].timestamp_ms
                self.emitted.extend((ts, t) for t in transitions)
        else:
            for entry in entries:
                bisect.insort(self.pending, entry, key=Entry.sort_key)
            transitions = self._refold_pending(rule)
        self._advance_checkpoint(horizon_ms, rule)
        return transitions

    def _fold_in(self, entries: list[Entry], rule: FoldRule) -> list[Transition]:
        """Fold one event's entries into `current`; the steps newly reached."""
        closed_before = self.current.sessions[0] if self.current.sessions else 0
        fold_state(self.current, entries, rule, in_place=True)
        new_level = level_of(self.current.slots)
        old_level = self.level
        if self.current.sessions and self.current.sessions[0] > closed_before:
            # A session closed: the steps the new one holds are all newly reached, even
            # those the closed one held too (its level was reported before).
            old_level = 0
        transitions = []
        for step in range(old_level + 1, new_level + 1):
            slot = self.current.slots[step - 1]
            if slot is not None:  # a skipped optional step has no event of its own
                transitions.append(Transition(step, slot[1], slot[0], slot[2]))
        self.level = new_level
        return transitions

    def _refold_pending(self, rule: FoldRule) -> list[Transition]:
        """An event landed between pending ones: fold the pending events again from the
        checkpoint one by one, as in-order arrival would have, and return what changes
        in the table: steps newly reached, and corrections of rows emitted before."""
        before = self.table()
        self.current = self.checkpoint.copy()
        self.level = level_of(self.checkpoint.slots)
        self.emitted = []
        start = 0
        pending = self.pending
        for i in range(1, len(pending) + 1):
            if i < len(pending) and pending[i].event_id == pending[start].event_id:
                continue
            ts = pending[start].timestamp_ms
            self.emitted.extend((ts, t) for t in self._fold_in(pending[start:i], rule))
            start = i
        after = self.table()
        moves: list[Transition] = []
        for step in sorted(set(before) | set(after)):
            old, new = before.get(step), after.get(step)
            if old is not None and new is not None and old.same(new):
                continue
            if old is not None:
                moves.append(old.as_kind("retracted"))
            if new is not None:
                moves.append(new.as_kind("reached" if old is None else "corrected"))
        return moves

    def table(self) -> dict[int, Transition]:
        """Per step, the transition the table holds now (the last one emitted)."""
        out = dict(self.marks)
        for _, t in self.emitted:
            out[t.step] = t
        return out

    def _add_held(
        self, value: str, entries: list[Entry], rule: FoldRule, horizon_ms: int
    ) -> list[Transition]:
        if self.by_value is None:
            self.by_value = {}
        progress = self.by_value.get(value)
        if progress is None:
            progress = self.by_value[value] = FunnelProgress(steps=self.steps)
        progress.add(entries, rule, horizon_ms)
        for v, p in list(self.by_value.items()):
            start = p.current.slots[0]
            settled = not p.pending or p.pending[-1].timestamp_ms < horizon_ms
            if settled and (start is None or start[0] + rule.window_ms < horizon_ms):
                # No entry at or after the horizon can extend any of its slots (every
                # start is at most slot 0's): only its level still matters.
                self.retired_level = max(self.retired_level, p.level)
                del self.by_value[v]
        new_level = max([self.retired_level, *(p.level for p in self.by_value.values())])
        transitions = []
        if new_level > self.level:
            slots = self.slots
            for step in range(self.level + 1, new_level + 1):
                slot = slots[step - 1]
                if slot is not None:
                    transitions.append(Transition(step, slot[1], slot[0], slot[2]))
        self.level = max(self.level, new_level)
        return transitions

    def _advance_checkpoint(self, horizon_ms: int, rule: FoldRule) -> None:
        cut = 0
        while cut < len(self.pending) and self.pending[cut].timestamp_ms < horizon_ms:
            cut += 1
        if cut:
            fold_state(self.checkpoint, self.pending[:cut], rule, in_place=True)
            del self.pending[:cut]
        done = 0
        while done < len(self.emitted) and self.emitted[done][0] < horizon_ms:
            t = self.emitted[done][1]
            self.marks[t.step] = t
            done += 1
        if done:
            del self.emitted[:done]

    def to_json(self) -> dict[str, object]:
        if self.by_value is not None:
            return {
                "c": [None] * self.steps,  # the step count, as for other funnels
                "p": [],
                "l": self.level,
                "s": self.slots,
                "h": {v: p.to_json() for v, p in self.by_value.items()},
                "r": self.retired_level,
            }
        # Built for one `orjson.dumps` right away (VisitorState.dumps), so lists held here
        # go in as they are, uncopied; each row is one literal (this runs per visitor and
        # funnel for every batch that touches the visitor).
        doc: dict[str, object] = {
            "c": self.checkpoint.slots,
            "p": [
                [e.timestamp_ms, e.step, e.event_id, e.first_step, e.value]
                if isinstance(e, HeldEntry)
                else [e.timestamp_ms, e.step, e.event_id, e.first_step]
                for e in self.pending
            ],
            "l": self.level,
            "s": self.current.slots,
        }
        # Written only when used, so states of plain funnels stay as small as before.
        if self.checkpoint.tail or self.current.tail:
            doc["ct"], doc["st"] = self.checkpoint.tail, self.current.tail
        if self.checkpoint.attempts:
            doc["ca"], doc["sa"] = self.checkpoint.attempts, self.current.attempts
        if self.checkpoint.latest or self.current.latest:
            doc["cl"], doc["sl"] = list(self.checkpoint.latest), list(self.current.latest)
        if self.checkpoint.sessions or self.current.sessions:
            doc["cm"], doc["sm"] = self.checkpoint.last_ms, self.current.last_ms
            doc["cs"], doc["ss"] = self.checkpoint.sessions, self.current.sessions
        if self.checkpoint.values or self.current.values:
            doc["cv"], doc["sv"] = self.checkpoint.values, self.current.values
        marks = self.marks
        doc["m"] = [
            [t.step, t.reached_at_ms, t.chain_started_at_ms, t.event_id]
            for t in (marks[step] for step in sorted(marks))
        ]
        if self.emitted:
            doc["e"] = [
                [ts, t.step, t.reached_at_ms, t.chain_started_at_ms, t.event_id]
                for ts, t in self.emitted
            ]
        return doc

    @classmethod
    def from_json(cls, steps: int, doc: dict[str, object]) -> FunnelProgress:
        pending_raw = doc["p"]
        assert isinstance(pending_raw, list)
        level = doc["l"]
        assert isinstance(level, int)

        held = doc.get("h")
        if isinstance(held, dict):
            retired = doc.get("r", 0)
            assert isinstance(retired, int)
            return cls(
                steps=steps,
                level=level,
                by_value={str(v): cls.from_json(steps, p) for v, p in held.items()},
                retired_level=retired,
            )

        def counts(key: str) -> list[int]:
            raw = doc.get(key, [])
            assert isinstance(raw, list)
            return [int(n) for n in raw]

        def millis(key: str) -> int | None:
            raw = doc.get(key)
            return None if raw is None else int(str(raw))

        def values(key: str) -> dict[str, list[Slot]] | None:
            raw = doc.get(key)
            if raw is None:
                return None
            assert isinstance(raw, dict)
            return {str(v): _slots_of(slots) for v, slots in raw.items()}

        checkpoint_slots = _slots_of(doc["c"])
        current_slots = _slots_of(doc["s"])
        raw_marks = doc.get("m")
        marks: dict[int, Transition] = {}
        emitted: list[tuple[int, Transition]] = []
        if isinstance(raw_marks, list):
            marks = {t.step: t for t in map(_transition_of, raw_marks)}
            raw_emitted = doc.get("e", [])
            assert isinstance(raw_emitted, list)
            emitted = [(int(e[0]), _transition_of(e[1:])) for e in raw_emitted]
        else:
            # Saved before the table's rows were kept: the steps held now are the best
            # account of what was emitted (each as if emitted when it was reached).
            emitted = [
                (s[1], Transition(k + 1, s[1], s[0], s[2]))
                for k, s in enumerate(current_slots[:level])
                if s is not None
            ]
        return cls(
            steps=steps,
            marks=marks,
            emitted=emitted,
            checkpoint=Folded(
                checkpoint_slots,
                str(doc.get("ct", "")),
                counts("ca"),
                _slots_of(doc.get("cl", [])),
                millis("cm"),
                counts("cs"),
                values("cv"),
            ),
            pending=[
                Entry(int(t), int(s), str(i), int(f), uuid_order(str(i)))
                if not held
                else HeldEntry(int(t), int(s), str(i), int(f), uuid_order(str(i)), str(held[0]))
                for t, s, i, f, *held in pending_raw
            ],
            level=level,
            current=Folded(
                current_slots,
                str(doc.get("st", "")),
                counts("sa"),
                _slots_of(doc.get("sl", [])),
                millis("sm"),
                counts("ss"),
                values("sv"),
            ),
        )


def reference_level(entries: list[Entry], rule: FoldRule) -> int:
    """The batch answer over all of a visitor's entries (what windowFunnel computes)."""
    ordered = sorted(entries, key=Entry.sort_key)
    return level_of(fold([None] * rule.steps, ordered, rule))
