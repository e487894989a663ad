"""A compiled check of a whole request body, for the common case: every event valid.

`schemas.events.parse_event` says, per field, what is wrong with an event; it builds an
`Event` per event, walks every property in Python, and the record is encoded afterwards.
Most requests hold only valid events, so ingest first tries this path: msgspec decodes the
body straight into typed structs (the types and the nesting limit checked in C while
parsing, integers read exactly), a short loop checks what types cannot say (lengths,
blank names, the UUID form, the time range), and writes each event's log record with the
same bytes `schemas.events.encode` would, without an `Event`.

It only ever accepts. On any doubt (malformed JSON, a type refused, an unknown field, a
UUID not in canonical form, a time out of range, an integer beyond 64 bits) it answers
None and the caller runs the full path, which accepts or names the field at fault; so
the two cannot differ on what is refused. tests/ingest/test_fast_path.py checks that both write
the same records.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
import orjson

from schemas.events import (
    MAX_FUTURE_MS,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PROPERTIES_BYTES,
    MIN_TIMESTAMP_MS,
    encode_fields,
    parse_timestamp,
    partition_key,
)
from schemas.properties import MAX_JSON_DEPTH

_Scalar = str | int | float | bool | None


def _json_value(levels: int) -> Any:
    """A JSON value whose objects and lists nest at most `levels` deep."""
    value: Any = _Scalar
    for _ in range(levels):
        value = _Scalar | dict[str, value] | list[value]
    return value


# `properties` is itself one level (schemas/properties.py `json_problem` counts it as
# depth 0), so its values may nest one level less than MAX_JSON_DEPTH.
_PropertyValue = _json_value(MAX_JSON_DEPTH - 1)

_Text = str | int | float | None


class WireEvent(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """An event as sent, typed as `parse_event` reads it (numbers are accepted for the
    names and ids and kept as their text). An unknown field sends the body to the full
    path: msgspec would skip its value unread, so a value that is not even JSON (invalid
    UTF-8, a number out of range) would pass here while the full path refuses the body.

    `gc=False`: decoded from JSON, a struct is part of a tree and never of a cycle, so the
    cyclic collector need not track the hundreds a batch makes (it cost ~15% of this path).
    """

    event: _Text = None
    visitor_id: _Text = None
    timestamp: _Text = None
    event_id: str | None = None
    session_id: _Text = None
    user_id: _Text = None
    sent_at: _Text = None
    properties: dict[str, _PropertyValue] | None = None  # type: ignore[valid-type]


class WireBody(WireEvent, gc=False, forbid_unknown_fields=True):
    """A body: one event, or `{"batch": [...]}` with the envelope's key and clock."""

    batch: list[WireEvent] | msgspec.UnsetType = msgspec.UNSET
    write_key: str | None = None

    def events(self) -> list[WireEvent]:
        return [self] if self.batch is msgspec.UNSET else self.batch


_DECODER = msgspec.json.Decoder(WireBody)


def decode_body(raw: bytes, max_events: int) -> WireBody | None:
    """The body typed, or None when it is not a well-formed body of valid types."""
    try:
        body = _DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    if body.batch is not msgspec.UNSET and not 0 < len(body.batch) <= max_events:
        return None
    return body


# Event ids, joined by newlines, all in canonical form (what `str(uuid.UUID(...))` writes,
# in any case): one regex pass for the whole batch. Other spellings uuid.UUID reads
# (braces, a urn: prefix, no hyphens) take the full path.
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUIDS = re.compile(f"(?:{_UUID}\n)*{_UUID}")


def encode_batch(
    body: WireBody, project_id: str, received_at_ms: int, context: dict[str, str]
) -> list[tuple[bytes, bytes]] | None:
    """(key, record) per event of `body`, in order; None if any event needs the full
    path (invalid, or valid in a form only it reads)."""
    events = body.events()
    batch_sent_at = None
    if body.sent_at is not None:
        batch_sent_at = parse_timestamp(body.sent_at)
        if batch_sent_at is None:
            return None
    event_ids = _event_ids(events)
    if event_ids is None:
        return None
    encoded_context = orjson.Fragment(orjson.dumps(context))
    key_prefix = partition_key(project_id, "")
    out = []
    for item, event_id in zip(events, event_ids, strict=True):
        name = _required(item.event, MAX_NAME_LENGTH)
        visitor_id = _required(item.visitor_id, MAX_ID_LENGTH)
        session_id = _optional(item.session_id)
        user_id = _optional(item.user_id)
        timestamp_ms = _timestamp(item, batch_sent_at, received_at_ms)
        if (
            name is None
            or visitor_id is None
            or session_id is None
            or user_id is None
            or timestamp_ms is None
        ):
            return None
        properties = {} if item.properties is None else item.properties
        try:
            record = encode_fields(
                project_id,
                event_id,
                name,
                visitor_id,
                timestamp_ms,
                received_at_ms,
                session_id,
                user_id,
                properties,
                encoded_context,
            )
        except orjson.JSONEncodeError:
            # The 64-bit check: orjson writes exactly the integers it can read back
            # (schemas/properties.py MIN_INTEGER..MAX_INTEGER) and raises beyond.
            return None
        # The properties are part of the record: only a record over their limit can
        # hold properties over it, and only then are they measured on their own.
        if len(record) > MAX_PROPERTIES_BYTES and (
            len(orjson.dumps(properties)) > MAX_PROPERTIES_BYTES
        ):
            return None
        out.append((key_prefix + visitor_id.encode(), record))
    return out


def _event_ids(events: list[WireEvent]) -> list[str] | None:
    """Each event's id in canonical form (a new one where none was sent), or None."""
    ids = [item.event_id for item in events]
    if None in ids:
        ids = [str(uuid.uuid4()) if i is None else i for i in ids]
    joined = "\n".join(ids)  # type: ignore[arg-type]  # no None left
    if _UUIDS.fullmatch(joined) is None:
        return None
    canonical = joined.lower().split("\n")
    # An id with a newline inside would split in two: the count tells.
    return canonical if len(canonical) == len(events) else None


def _required(value: str | float | None, limit: int) -> str | None:
    if value is None:
        return None
    text = value if type(value) is str else str(value)
    return text if len(text) <= limit and text.strip() else None


def _optional(value: str | float | None) -> str | None:
    if value is None:
        return ""
    if type(value) is not str:
        return str(value)  # a number: kept as its text, as parse_event does
    return value if len(value) <= MAX_ID_LENGTH else None


def _timestamp(item: WireEvent, batch_sent_at: int | None, received_at_ms: int) -> int | None:
    """As `parse_event`: the client's time corrected by its clock's skew, in range."""
    sent_at = batch_sent_at
    if item.sent_at is not None:
        sent_at = parse_timestamp(item.sent_at)
        if sent_at is None:
            return None
    if item.timestamp is None:
        return received_at_ms
    timestamp = parse_timestamp(item.timestamp)
    if timestamp is None:
        return None
    if sent_at is not None:
        timestamp += received_at_ms - sent_at
    if not MIN_TIMESTAMP_MS <= timestamp <= received_at_ms + MAX_FUTURE_MS:
        return None
    return timestamp
