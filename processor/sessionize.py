"""Sessionization: a new session after `gap` of inactivity. Pure Python.

The sessions of a visitor are the maximal runs of their events (in timestamp order)
in which consecutive events are less than `gap` apart. Events may arrive out of order
within `lateness`: a late event joins the session it falls in, extends one, or bridges
two (which then merge: the later one is reported as deleted). Sessions that ended more
than `gap + lateness` before the visitor's newest event can no longer change and are
dropped from the state.

A session's id is fixed when it is created: derived from the visitor and the event that
opened it, so a replay produces the same id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

_SESSION_NAMESPACE = uuid.UUID("6f1d8a43-5a0e-4b8e-9a51-9d2f2f7c1e10")


@dataclass(slots=True)
class Session:
    session_id: str
    started_at_ms: int
    ended_at_ms: int
    event_count: int
    # Attribution fields come from the earliest event of the session.
    entry: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> list[object]:
        return [self.session_id, self.started_at_ms, self.ended_at_ms, self.event_count, self.entry]

    @classmethod
    def from_json(cls, raw: list[object]) -> Session:
        sid, start, end, count, entry = raw
        assert isinstance(entry, dict)
        return cls(str(sid), int(str(start)), int(str(end)), int(str(count)), dict(entry))


@dataclass(frozen=True, slots=True)
class SessionChange:
    session: Session
    deleted: bool = False


_NAMESPACE_BYTES = _SESSION_NAMESPACE.bytes


def new_session_id(project_id: str, visitor_id: str, event_id: str) -> str:
    """`str(uuid.uuid5(_SESSION_NAMESPACE, name))`, computed without the UUID object, which
    cost twice the hash (a session is opened for every third event or so); the property
    test in tests/processor/test_sessionize.py holds it to the standard library's."""
    name = f"{project_id}\x1f{visitor_id}\x1f{event_id}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def place(
    sessions: list[Session],
    *,
    timestamp_ms: int,
    entry: dict[str, str] | Callable[[], dict[str, str]],
    new_id: str | Callable[[], str],
    gap_ms: int,
) -> list[SessionChange]:
    """Put one event into `sessions` (kept sorted by start); return what changed. `entry`
    and `new_id` may be functions: they are called only for a session's first event."""
    touching = [
        s for s in sessions if s.started_at_ms - gap_ms < timestamp_ms < s.ended_at_ms + gap_ms
    ]
    if not touching:
        # The id is derived only when a session is really created (uuid5 is not free).
        session_id = new_id() if callable(new_id) else new_id
        created = Session(session_id, timestamp_ms, timestamp_ms, 1, _entry(entry))
        sessions.append(created)
        sessions.sort(key=lambda s: s.started_at_ms)
        return [SessionChange(created)]
    keep = touching[0]
    changes: list[SessionChange] = []
    for absorbed in touching[1:]:
        keep.ended_at_ms = max(keep.ended_at_ms, absorbed.ended_at_ms)
        keep.event_count += absorbed.event_count
        sessions.remove(absorbed)
        changes.append(SessionChange(absorbed, deleted=True))
    keep.event_count += 1
    if timestamp_ms < keep.started_at_ms:
        keep.started_at_ms = timestamp_ms
        keep.entry = _entry(entry)
    keep.ended_at_ms = max(keep.ended_at_ms, timestamp_ms)
    changes.insert(0, SessionChange(keep))
    return changes


def _entry(entry: dict[str, str] | Callable[[], dict[str, str]]) -> dict[str, str]:
    return entry() if callable(entry) else dict(entry)


def session_of(sessions: list[Session], timestamp_ms: int) -> Session | None:
    for s in sessions:
        if s.started_at_ms <= timestamp_ms <= s.ended_at_ms:
            return s
    return None


def forget_closed(sessions: list[Session], newest_ms: int, gap_ms: int, lateness_ms: int) -> None:
    """Drop sessions no event within the allowed lateness can reach any more."""
    earliest_placeable = newest_ms - lateness_ms
    # Sessions never overlap, so sorted by start they are sorted by end: the first one
    # tells whether any is closed (the usual answer, per event, is no).
    if sessions and sessions[0].ended_at_ms + gap_ms <= earliest_placeable:
        sessions[:] = [s for s in sessions if s.ended_at_ms + gap_ms > earliest_placeable]


def reference_sessions(timestamps: list[int], gap_ms: int) -> list[tuple[int, int, int]]:
    """(start, end, count) per session from all timestamps at once: the batch answer."""
    out: list[tuple[int, int, int]] = []
    for ts in sorted(timestamps):
        if out and ts - out[-1][1] < gap_ms:
            start, _, count = out[-1]
            out[-1] = (start, ts, count + 1)
        else:
            out.append((ts, ts, 1))
    return out
