"""The erasure request: a control record on the events log, keyed like the visitor's events.

Keyed by (project, visitor) it lands in the visitor's partition after every event of the
visitor appended before it, so the processor reaches it in order: what came before is
erased, what comes after is new data. Its payload starts with `{"erase":`, which no event
payload does (events start with `{"v":`, schemas/events.py), so a reader tells the two
apart from the first bytes without parsing every event twice.

A release that does not know this record dead-letters it as an unknown schema version:
the erasure is then not done, and the dead letter says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

ERASURE_FORMAT = 1
_PREFIX = b'{"erase":'


@dataclass(frozen=True, slots=True)
class Erasure:
    project_id: str
    visitor_id: str
    # The request it belongs to (one user erasure covers several visitors).
    erasure_id: str
    requested_at_ms: int
    # Set when a whole user is erased: rows keyed by the user id go too (its
    # `count_by: "user"` funnel state and transitions, its identities).
    user_id: str = ""

    def partition_key(self) -> bytes:
        """The visitor's events' key (schemas/events.py `Event.partition_key`)."""
        return f"{self.project_id}\x1f{self.visitor_id}".encode()


class InvalidErasure(ValueError):
    """A record that starts like an erasure but is not a readable one."""


def is_erasure(payload: bytes) -> bool:
    return payload.startswith(_PREFIX)


def encode_erasure(erasure: Erasure) -> bytes:
    # "erase" first: `is_erasure` reads the prefix (orjson keeps insertion order).
    return orjson.dumps(
        {
            "erase": ERASURE_FORMAT,
            "p": erasure.project_id,
            "vid": erasure.visitor_id,
            "id": erasure.erasure_id,
            "at": erasure.requested_at_ms,
            "uid": erasure.user_id,
        }
    )


def decode_erasure(payload: bytes) -> Erasure:
    try:
        doc = orjson.loads(payload)
        if doc["erase"] != ERASURE_FORMAT:
            raise InvalidErasure(f"erasure format {doc['erase']!r}")
        return Erasure(
            project_id=str(doc["p"]),
            visitor_id=str(doc["vid"]),
            erasure_id=str(doc["id"]),
            requested_at_ms=int(doc["at"]),
            user_id=str(doc.get("uid", "")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InvalidErasure):
            raise
        raise InvalidErasure(str(exc)) from exc
