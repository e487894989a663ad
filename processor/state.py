"""What the processor remembers per visitor, and how it is saved and restored.

The state is plain data (serialised as JSON into `processor_state`), written after the
rows it produced and before the offset commit. `applied_offset` is the log offset of the
last event this visitor absorbed: after a crash the processor re-reads from the last
committed offset and skips, per visitor, every message at or below it, so nothing is
applied twice and the re-written rows are identical (ReplacingMergeTree collapses them).

A backfill writes one funnel's progress per visitor instead (`visitor_funnel_progress`);
on restore those rows are laid over the states written before them (processor/restore.py).

The stored format is versioned (`"fmt"`): 1 (no field) is what releases up to the one
that kept the last 512 event ids per visitor wrote; 2 adds, per funnel, the transitions
the table holds (`m`, `e`: funnel/fold.py) and drops the ids. Every version this release
knows loads; a newer one (written by a later release, then rolled back) is refused
loudly rather than misread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from funnel.fold import FunnelProgress
from processor.sessionize import Session

STATE_FORMAT = 2


class StateFormatError(ValueError):
    """A visitor state written in a format this release does not know."""


@dataclass(slots=True)
class VisitorState:
    project_id: str
    visitor_id: str
    newest_ms: int = 0
    applied_offset: int = -1
    sessions: list[Session] = field(default_factory=list)
    funnels: dict[str, FunnelProgress] = field(default_factory=dict)
    # (timestamp ms, user id) of the visitor's newest event that carried a user id: the
    # user its events count for in `count_by: "user"` funnels (None: never identified).
    identity: tuple[int, str] | None = None

    def identify(self, timestamp_ms: int, user_id: str) -> str | None:
        """Note an event's user id; return the user the visitor counted for until now
        ("" if none) when this changes it, else None. The newest event wins, as in the
        report; a late event with an older timestamp changes nothing."""
        old = self.identity
        if old is not None and timestamp_ms <= old[0]:
            return None
        self.identity = (timestamp_ms, user_id)
        previous = "" if old is None else old[1]
        return previous if previous != user_id else None

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "fmt": STATE_FORMAT,
                "p": self.project_id,
                "v": self.visitor_id,
                "n": self.newest_ms,
                "o": self.applied_offset,
                # Always empty: the previous release requires the key (it kept the
                # last ids here), so a rollback can still load states written now.
                "seen": [],
                "s": [s.to_json() for s in self.sessions],
                "f": {fid: fp.to_json() for fid, fp in self.funnels.items()},
                "u": list(self.identity) if self.identity else None,
            }
        )

    @classmethod
    def loads(cls, raw: bytes | str, funnel_steps: dict[str, int]) -> VisitorState:
        doc = orjson.loads(raw)
        version = doc.get("fmt", 1)
        if not isinstance(version, int) or not 1 <= version <= STATE_FORMAT:
            raise StateFormatError(
                f"visitor state format {version!r}: this release reads 1 to {STATE_FORMAT}"
            )
        state = cls(
            project_id=doc["p"],
            visitor_id=doc["v"],
            newest_ms=int(doc["n"]),
            applied_offset=int(doc["o"]),
            sessions=[Session.from_json(s) for s in doc["s"]],
        )
        # A previous release's "seen" ids are ignored: the stored events cover them.
        identity = doc.get("u")  # absent in states saved before identities were kept
        if identity:
            state.identity = (int(identity[0]), str(identity[1]))
        for fid, fp in doc["f"].items():
            # A funnel deleted or redefined with another step count starts over.
            if funnel_steps.get(fid) == len(fp["c"]):
                state.funnels[fid] = FunnelProgress.from_json(funnel_steps[fid], fp)
        return state


def visitor_key(project_id: str, visitor_id: str) -> str:
    return f"{project_id}\x1f{visitor_id}"


class HeldStates:
    """The visitor states of the partitions this processor holds, per partition. Loaded on
    assignment, dropped on revocation (aiokafka's local-state consumer)."""

    def __init__(self) -> None:
        self._by_partition: dict[int, dict[str, VisitorState]] = {}

    def get_or_create(self, partition: int, project_id: str, visitor_id: str) -> VisitorState:
        states = self._by_partition.setdefault(partition, {})
        key = visitor_key(project_id, visitor_id)
        state = states.get(key)
        if state is None:
            state = states[key] = VisitorState(project_id, visitor_id)
        return state

    def put(self, partition: int, key: str, state: VisitorState) -> None:
        self._by_partition.setdefault(partition, {})[key] = state

    def replace(self, partition: int, key: str, state: VisitorState) -> None:
        """Swap a held state for a re-folded one; a state of a partition revoked meanwhile
        stays dropped."""
        held = self._by_partition.get(partition)
        if held is not None and key in held:
            held[key] = state

    def of(self, partition: int) -> dict[str, VisitorState]:
        return self._by_partition.get(partition, {})

    def forget(self, key: str) -> None:
        """Drop one visitor's state wherever it is held (an erasure)."""
        for states in self._by_partition.values():
            states.pop(key, None)

    def drop(self, partitions: frozenset[int]) -> None:
        for partition in partitions:
            self._by_partition.pop(partition, None)

    def all(self) -> Iterator[VisitorState]:
        for states in self._by_partition.values():
            yield from states.values()

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_partition.values())
