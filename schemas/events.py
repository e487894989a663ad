"""The tracking event: how clients send it, how it travels on the log.

Clients send loose JSON; `parse_event` turns one into an `Event` or says, per field, what
is wrong. On the log an event is compact JSON with a schema version (`encode`/`decode`),
so a processor can recognise a message it does not understand and dead-letter it.
"""

from __future__ import annotations

import calendar
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.properties import json_problem

SCHEMA_VERSION = 1

MAX_NAME_LENGTH = 200
MAX_ID_LENGTH = 200
MAX_PROPERTIES_BYTES = 32 * 1024
# Historical imports are welcome; timestamps before this are almost surely unit mistakes
# (seconds sent as milliseconds, zeros).
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
# A little future is clock skew we could not correct; more is a broken client.
MAX_FUTURE_MS = 24 * 3600 * 1000

KNOWN_FIELDS = frozenset(
    {
        "event",
        "visitor_id",
        "timestamp",
        "event_id",
        "session_id",
        "user_id",
        "sent_at",
        "properties",
        "write_key",
    }
)


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Event:
    project_id: str
    event_id: str
    event: str
    visitor_id: str
    timestamp_ms: int
    received_at_ms: int
    session_id: str = ""
    user_id: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    # Filled by ingest enrichment (user agent, device, country...): flat strings.
    context: dict[str, str] = field(default_factory=dict)

    def partition_key(self) -> bytes:
        return partition_key(self.project_id, self.visitor_id)


def partition_key(project_id: str, visitor_id: str) -> bytes:
    """Log key: one visitor of one project always lands in the same partition."""
    return f"{project_id}\x1f{visitor_id}".encode()


class InvalidMessage(ValueError):
    """A log message the processor cannot use; it goes to the dead-letter table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def parse_timestamp(value: object) -> int | None:
    """ISO-8601 string or epoch milliseconds → epoch ms; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.lstrip("-").isdigit():
            # isdigit() also accepts '²' and '--5'; int() refuses those (and > 4300 digits).
            try:
                return int(text)
            except ValueError:
                return None
        return iso_to_epoch_ms(text)
    return None


def iso_to_epoch_ms(text: str) -> int | None:
    """An ISO 8601 timestamp → epoch ms (below a millisecond truncated); None when
    unreadable. No zone reads as UTC, as ClickHouse would. Integer arithmetic: a float
    timestamp loses the millisecond for about one datetime in two hundred."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.utctimetuple()
    except OverflowError:  # year 1 or 9999 shifted past the calendar by its offset
        return None
    return calendar.timegm(utc) * 1000 + parsed.microsecond // 1000


def _required_string(raw: dict[str, Any], name: str, limit: int, errors: list[FieldError]) -> str:
    value = raw.get(name)
    if value is None:
        errors.append(FieldError(name, "is required"))
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        errors.append(FieldError(name, "must be a string"))
        return ""
    if not value.strip():
        errors.append(FieldError(name, "must not be empty"))
        return ""
    if len(value) > limit:
        errors.append(FieldError(name, f"must be at most {limit} characters"))
        return ""
    return value


def _optional_string(raw: dict[str, Any], name: str, errors: list[FieldError]) -> str:
    value = raw.get(name)
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        errors.append(FieldError(name, "must be a string"))
        return ""
    if len(value) > MAX_ID_LENGTH:
        errors.append(FieldError(name, f"must be at most {MAX_ID_LENGTH} characters"))
        return ""
    return value


def parse_event(
    raw: object,
    *,
    project_id: str,
    received_at_ms: int,
    batch_sent_at_ms: int | None = None,
) -> Event | list[FieldError]:
    """Validate one client event; correct its timestamp for client clock skew.

    Skew correction: a client stamps `timestamp` and `sent_at` with the same (possibly
    wrong) clock, so `received_at - sent_at` is that clock's offset (plus network time)
    and is added to `timestamp`.
    """
    if not isinstance(raw, dict):
        return [FieldError("", "an event must be a JSON object")]
    errors: list[FieldError] = []
    name = _required_string(raw, "event", MAX_NAME_LENGTH, errors)
    visitor_id = _required_string(raw, "visitor_id", MAX_ID_LENGTH, errors)
    session_id = _optional_string(raw, "session_id", errors)
    user_id = _optional_string(raw, "user_id", errors)

    event_id = raw.get("event_id")
    if event_id is None:
        event_id = str(uuid.uuid4())
    elif not isinstance(event_id, str):
        errors.append(FieldError("event_id", "must be a UUID string"))
    else:
        try:
            event_id = str(uuid.UUID(event_id))
        except ValueError:
            errors.append(FieldError("event_id", "must be a UUID string"))

    sent_at_ms = batch_sent_at_ms
    if raw.get("sent_at") is not None:
        sent_at_ms = parse_timestamp(raw["sent_at"])
        if sent_at_ms is None:
            errors.append(FieldError("sent_at", "must be ISO-8601 or epoch milliseconds"))

    timestamp_ms = received_at_ms
    if raw.get("timestamp") is not None:
        parsed = parse_timestamp(raw["timestamp"])
        if parsed is None:
            errors.append(FieldError("timestamp", "must be ISO-8601 or epoch milliseconds"))
        else:
            timestamp_ms = parsed
            if sent_at_ms is not None:
                timestamp_ms += received_at_ms - sent_at_ms
            if timestamp_ms < MIN_TIMESTAMP_MS:
                errors.append(FieldError("timestamp", "is before 2000-01-01 (seconds sent?)"))
            elif timestamp_ms > received_at_ms + MAX_FUTURE_MS:
                errors.append(FieldError("timestamp", "is more than a day in the future"))

    properties = raw.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        errors.append(FieldError("properties", "must be an object"))
        properties = {}
    elif (problem := properties_problem(properties)) is not None:
        errors.append(problem)
    elif len(orjson.dumps(properties)) > MAX_PROPERTIES_BYTES:
        errors.append(FieldError("properties", f"must be at most {MAX_PROPERTIES_BYTES} bytes"))

    if errors:
        return errors
    assert isinstance(event_id, str)
    return Event(
        project_id=project_id,
        event_id=event_id,
        event=name,
        visitor_id=visitor_id,
        timestamp_ms=timestamp_ms,
        received_at_ms=received_at_ms,
        session_id=session_id,
        user_id=user_id,
        properties=properties,
    )


def properties_problem(properties: dict[str, Any]) -> FieldError | None:
    """The first value of `properties` that could not be kept exactly, by its path."""
    problem = json_problem(properties, "properties")
    return None if problem is None else FieldError(problem.path, problem.message)


def encode(event: Event) -> bytes:
    return encode_fields(
        event.project_id,
        event.event_id,
        event.event,
        event.visitor_id,
        event.timestamp_ms,
        event.received_at_ms,
        event.session_id,
        event.user_id,
        event.properties,
        event.context,
    )


def encode_fields(
    project_id: str,
    event_id: str,
    name: str,
    visitor_id: str,
    timestamp_ms: int,
    received_at_ms: int,
    session_id: str,
    user_id: str,
    properties: dict[str, Any] | orjson.Fragment,
    context: dict[str, str] | orjson.Fragment,
) -> bytes:
    """The log record of one event. `properties` and `context` may come already encoded
    (an `orjson.Fragment`), which writes the same bytes: ingest's batch path encodes
    the properties once to check their size, and a request's context once for all its
    events (schemas/events_fast.py)."""
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "p": project_id,
            "id": event_id,
            "e": name,
            "vid": visitor_id,
            "ts": timestamp_ms,
            "rt": received_at_ms,
            "sid": session_id,
            "uid": user_id,
            "props": properties,
            "ctx": context,
        }
    )


# A record ingest accepted but that is no event (an SDK's identity merge): it names its
# reason under this field, and the processor keeps it as a dead letter with that reason.
DEAD_LETTER_FIELD = "dead_letter"


def encode_dead_letter(project_id: str, reason: str, detail: str, payload: object) -> bytes:
    """The log record of a call ingest accepted and keeps only as a dead letter (the call
    as it came in `payload`), so it is as durable as an event before the client hears 2xx.
    An integer beyond 64 bits (kept exactly by ingest's `loads_exact`, refused by orjson)
    is written by the standard encoder, so no call ingest accepts fails to be stored."""
    doc = {
        "v": SCHEMA_VERSION,
        DEAD_LETTER_FIELD: reason,
        "p": project_id,
        "detail": detail,
        "payload": payload,
    }
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc, separators=(",", ":")).encode()


def decode(payload: bytes) -> Event:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage("undecodable", str(exc)) from exc
    if not isinstance(doc, dict):
        raise InvalidMessage("undecodable", "not a JSON object")
    if DEAD_LETTER_FIELD in doc:
        raise InvalidMessage(str(doc[DEAD_LETTER_FIELD]), str(doc.get("detail", "")))
    version = doc.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidMessage("unknown_schema_version", repr(version))
    try:
        event = Event(
            project_id=str(doc["p"]),
            event_id=str(doc["id"]),
            event=str(doc["e"]),
            visitor_id=str(doc["vid"]),
            timestamp_ms=int(doc["ts"]),
            received_at_ms=int(doc["rt"]),
            session_id=str(doc.get("sid", "")),
            user_id=str(doc.get("uid", "")),
            properties=dict(doc.get("props") or {}),
            context=dict(doc.get("ctx") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidMessage("invalid_fields", str(exc)) from exc
    return event
