"""Client events: per-field errors, timestamps, skew correction, log encoding."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import (
    MAX_FUTURE_MS,
    MAX_PROPERTIES_BYTES,
    MIN_TIMESTAMP_MS,
    SCHEMA_VERSION,
    Event,
    FieldError,
    InvalidMessage,
    decode,
    encode,
    parse_event,
    parse_timestamp,
)

NOW = 1_760_000_000_000  # 2025-10-09T08:53:20Z
EID = "12345678-1234-4234-8234-123456789abc"


def parse(raw: object, batch_sent_at_ms: int | None = None) -> Event | list[FieldError]:
    return parse_event(raw, project_id="p", received_at_ms=NOW, batch_sent_at_ms=batch_sent_at_ms)


def ok(raw: dict[str, Any], batch_sent_at_ms: int | None = None) -> Event:
    result = parse(raw, batch_sent_at_ms)
    assert isinstance(result, Event), result
    return result


def errors(raw: object) -> list[FieldError]:
    result = parse(raw)
    assert isinstance(result, list), result
    return result


BASE = {"event": "view", "visitor_id": "v1"}


def test_minimal_event_gets_defaults() -> None:
    event = ok(BASE)
    assert event.project_id == "p"
    assert event.event == "view"
    assert event.visitor_id == "v1"
    assert event.timestamp_ms == NOW
    assert event.received_at_ms == NOW
    assert (event.session_id, event.user_id, event.properties, event.context) == ("", "", {}, {})
    assert uuid.UUID(event.event_id).version == 4


def test_full_event() -> None:
    event = ok(
        {
            **BASE,
            "event_id": EID.upper(),
            "timestamp": NOW - 5000,
            "session_id": "s",
            "user_id": 42,
            "properties": {"a": 1},
            "write_key": "ignored here",
        }
    )
    assert event == Event("p", EID, "view", "v1", NOW - 5000, NOW, "s", "42", {"a": 1})


def test_not_an_object() -> None:
    assert errors([BASE]) == [FieldError("", "an event must be a JSON object")]
    assert errors("view") == [FieldError("", "an event must be a JSON object")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"visitor_id": "v"}, [FieldError("event", "is required")]),
        ({"event": None, "visitor_id": "v"}, [FieldError("event", "is required")]),
        ({"event": "  ", "visitor_id": "v"}, [FieldError("event", "must not be empty")]),
        ({"event": ["x"], "visitor_id": "v"}, [FieldError("event", "must be a string")]),
        ({"event": True, "visitor_id": "v"}, [FieldError("event", "must be a string")]),
        (
            {"event": "x" * 201, "visitor_id": "v"},
            [FieldError("event", "must be at most 200 characters")],
        ),
        ({"event": "e"}, [FieldError("visitor_id", "is required")]),
        (
            {"event": "e", "visitor_id": "v" * 201},
            [FieldError("visitor_id", "must be at most 200 characters")],
        ),
        ({**BASE, "session_id": {}}, [FieldError("session_id", "must be a string")]),
        (
            {**BASE, "user_id": "u" * 201},
            [FieldError("user_id", "must be at most 200 characters")],
        ),
        ({**BASE, "event_id": "nope"}, [FieldError("event_id", "must be a UUID string")]),
        ({**BASE, "event_id": 12}, [FieldError("event_id", "must be a UUID string")]),
        (
            {**BASE, "timestamp": "yesterday"},
            [FieldError("timestamp", "must be ISO-8601 or epoch milliseconds")],
        ),
        (
            {**BASE, "timestamp": True},
            [FieldError("timestamp", "must be ISO-8601 or epoch milliseconds")],
        ),
        (
            {**BASE, "sent_at": "soon"},
            [FieldError("sent_at", "must be ISO-8601 or epoch milliseconds")],
        ),
        ({**BASE, "properties": [1]}, [FieldError("properties", "must be an object")]),
        ({**BASE, "properties": "a=1"}, [FieldError("properties", "must be an object")]),
    ],
)
def test_field_errors(raw: dict[str, Any], expected: list[FieldError]) -> None:
    assert errors(raw) == expected


def test_every_bad_field_is_reported_at_once_in_field_order() -> None:
    assert [e.field for e in errors({"event_id": "x", "properties": 3})] == [
        "event",
        "visitor_id",
        "event_id",
        "properties",
    ]


def test_numeric_ids_are_accepted_as_strings() -> None:
    event = ok({"event": "e", "visitor_id": 123, "session_id": 4.5})
    assert (event.visitor_id, event.session_id) == ("123", "4.5")


def test_properties_size_limit() -> None:
    # {"k":"..."} is 8 bytes of JSON around the value.
    at_limit = {"k": "x" * (MAX_PROPERTIES_BYTES - 8)}
    assert len(orjson.dumps(at_limit)) == MAX_PROPERTIES_BYTES
    assert ok({**BASE, "properties": at_limit}).properties == at_limit
    over = {"k": "x" * (MAX_PROPERTIES_BYTES - 7)}
    assert errors({**BASE, "properties": over}) == [
        FieldError("properties", f"must be at most {MAX_PROPERTIES_BYTES} bytes")
    ]


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (1_700_000_000_123, 1_700_000_000_123),
        (1_700_000_000_123.9, 1_700_000_000_123),
        ("1700000000123", 1_700_000_000_123),
        (" 1700000000123 ", 1_700_000_000_123),
        ("-5", -5),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20.123Z", 1_700_000_000_123),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),  # no zone: UTC
        ("2023-11-14", 1_699_920_000_000),
        (True, None),
        (None, None),
        ("", None),
        ("   ", None),
        ("not a date", None),
        ("1.5e12", None),
        ([1], None),
        # isdigit() is true for these but int() refuses them: unreadable, not a crash.
        ("--5", None),
        ("\u00b2", None),
        ("9" * 5000, None),
        (float("inf"), None),
        (float("nan"), None),
    ],
)
def test_parse_timestamp(value: object, ms: int | None) -> None:
    assert parse_timestamp(value) == ms


def test_unreadable_numeric_looking_timestamp_is_a_field_error() -> None:
    assert errors({**BASE, "timestamp": "--5"}) == [
        FieldError("timestamp", "must be ISO-8601 or epoch milliseconds")
    ]


def test_timestamp_iso_and_epoch_agree() -> None:
    assert ok({**BASE, "timestamp": "2025-10-09T08:53:19Z"}).timestamp_ms == NOW - 1000
    assert ok({**BASE, "timestamp": NOW - 1000}).timestamp_ms == NOW - 1000


def test_skew_correction_with_sent_at() -> None:
    # The client clock runs 1 h behind: sent_at reads NOW - 1h on arrival.
    hour = 3_600_000
    event = ok({**BASE, "timestamp": NOW - hour - 30_000, "sent_at": NOW - hour})
    assert event.timestamp_ms == NOW - 30_000


def test_skew_correction_with_the_batch_sent_at() -> None:
    event = ok({**BASE, "timestamp": NOW - 10_000}, batch_sent_at_ms=NOW - 4000)
    assert event.timestamp_ms == NOW - 6000


def test_event_sent_at_overrides_the_batch_one() -> None:
    event = ok({**BASE, "timestamp": NOW - 10_000, "sent_at": NOW}, batch_sent_at_ms=NOW - 4000)
    assert event.timestamp_ms == NOW - 10_000


def test_sent_at_without_timestamp_changes_nothing() -> None:
    assert ok({**BASE, "sent_at": NOW - 99_999}).timestamp_ms == NOW


def test_timestamp_bounds_apply_after_skew_correction() -> None:
    assert ok({**BASE, "timestamp": MIN_TIMESTAMP_MS}).timestamp_ms == MIN_TIMESTAMP_MS
    assert errors({**BASE, "timestamp": MIN_TIMESTAMP_MS - 1}) == [
        FieldError("timestamp", "is before 2000-01-01 (seconds sent?)")
    ]
    assert errors({**BASE, "timestamp": 1_760_000_000}) == [  # seconds, not ms
        FieldError("timestamp", "is before 2000-01-01 (seconds sent?)")
    ]
    assert ok({**BASE, "timestamp": NOW + MAX_FUTURE_MS}).timestamp_ms == NOW + MAX_FUTURE_MS
    assert errors({**BASE, "timestamp": NOW + MAX_FUTURE_MS + 1}) == [
        FieldError("timestamp", "is more than a day in the future")
    ]
    # Two days ahead, but so is the client's clock: corrected into range.
    two_days = 2 * MAX_FUTURE_MS
    assert ok({**BASE, "timestamp": NOW + two_days, "sent_at": NOW + two_days}).timestamp_ms == NOW


def test_encode_decode_roundtrip() -> None:
    event = Event(
        "p",
        EID,
        "purchase",
        "v",
        NOW - 1,
        NOW,
        "s",
        "u",
        {"amount": 12.5, "items": [{"sku": "a"}], "ok": True, "none": None},
        {"browser": "Firefox"},
    )
    assert decode(encode(event)) == event
    assert orjson.loads(encode(event))["v"] == SCHEMA_VERSION


def test_partition_key_is_project_and_visitor() -> None:
    assert ok(BASE).partition_key() == b"p\x1fv1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "undecodable"),
        (b"\xff\xfe", "undecodable"),
        (b"[1, 2]", "undecodable"),
        (b'"text"', "undecodable"),
        (b'{"p": "p"}', "unknown_schema_version"),
        (b'{"v": 2, "p": "p"}', "unknown_schema_version"),
        (b'{"v": "1"}', "unknown_schema_version"),
        (b'{"v": 1, "p": "p"}', "invalid_fields"),
        (
            b'{"v": 1, "p": "p", "id": "i", "e": "e", "vid": "v", "ts": "x", "rt": 1}',
            "invalid_fields",
        ),
    ],
)
def test_decode_refuses_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(payload)
    assert info.value.reason == reason


def test_invalid_message_text_names_reason_and_detail() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(b'{"v": 7}')
    assert str(info.value) == "unknown_schema_version: 7"
    assert info.value.detail == "7"
    assert str(InvalidMessage("undecodable")) == "undecodable"


def test_iso_timestamps_keep_their_millisecond() -> None:
    # Through a float, this one came out a millisecond early (…910).
    assert parse_timestamp("2039-03-21T00:14:17.911Z") == 2184279257911


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_ingest_and_import_read_an_iso_timestamp_alike(moment: datetime) -> None:
    from funnelstream import importer

    text = moment.isoformat(timespec="milliseconds") + "Z"
    expected = (moment - datetime(1970, 1, 1)) // timedelta(milliseconds=1)
    assert parse_timestamp(text) == importer.parse_timestamp(text) == expected
