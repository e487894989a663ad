"""The stage board's request and answer shapes that need no I/O: the opaque page cursor,
`where` filters, and CSV lines (query_api/routes/board.py serves them)."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import orjson

from query_api.sql.board import BoardCursor

# Property names the board looks up: what event properties flatten to (schemas/
# properties.py: dotted paths), bounded so a request cannot ask for unbounded work.
PROPERTY_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_.$:-]{0,99}$")
MAX_PROPERTIES = 8


class BadBoardRequest(ValueError):
    """A board parameter that cannot be used; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def encode_cursor(cursor: BoardCursor) -> str:
    raw = orjson.dumps([cursor.level, cursor.entered_ms, cursor.visitor_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> BoardCursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        level, entered_ms, visitor = orjson.loads(raw)
        if not (isinstance(level, int) and isinstance(entered_ms, int)):
            raise TypeError("level and entered_ms are integers")
        if not isinstance(visitor, str) or not 0 < level < 256:
            raise TypeError("a visitor id and a level 1..255")
    except (ValueError, TypeError) as e:
        raise BadBoardRequest("cursor", "not a cursor this route gave out") from e
    return BoardCursor(level, entered_ms, visitor)


def parse_properties(
    names: Sequence[str], where: Sequence[str]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The property names to look up (those asked for, then those filtered on) and the
    (name, value) filters, from `property=name` and `where=name=value` parameters."""
    pairs: list[tuple[str, str]] = []
    for item in where:
        name, sep, value = item.partition("=")
        if not sep:
            raise BadBoardRequest("where", f"{item!r}: expected name=value")
        pairs.append((name, value))
    looked_up = list(dict.fromkeys([*names, *(n for n, _ in pairs)]))
    for name in looked_up:
        field = "property" if name in names else "where"
        if not PROPERTY_NAME.match(name):
            raise BadBoardRequest(field, f"{name!r} is not a property name")
    if len(looked_up) > MAX_PROPERTIES:
        raise BadBoardRequest("property", f"at most {MAX_PROPERTIES} properties")
    return tuple(looked_up), tuple(pairs)
