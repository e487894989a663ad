"""The batch fast path (schemas/events_fast.py) against the full path it shortcuts.

Whenever the fast path accepts a body, the full path (parse_json → validate → enrich →
records) must accept every event of it and write the same records, byte for byte; and
the bodies clients really send must take the fast path.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from funnelstream.config import Project
from funnelstream.log import LogRecord
from ingest.pipeline import (
    IngestError,
    context_for,
    decode_fast,
    enrich,
    fast_records,
    parse_json,
    records,
    validate,
)
from schemas.events import MAX_PROPERTIES_BYTES, decode
from schemas.properties import MAX_INTEGER, MAX_JSON_DEPTH, MIN_INTEGER

NOW = 1_760_000_000_000
SHOP = Project("shop", SecretStr("wk_shop_0123456789"), SecretStr("rk_shop_0123456789"))
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
MAX_EVENTS = 50


def fast(raw: bytes, country: str = "") -> list[LogRecord] | None:
    body = decode_fast(raw, MAX_EVENTS)
    if body is None:
        return None
    return fast_records(body, SHOP, NOW, context_for(FIREFOX, country))


def full(raw: bytes, country: str = "") -> list[LogRecord] | str:
    """The full path's records, or why it did not accept every event."""
    try:
        raw_events, envelope = parse_json(raw, MAX_EVENTS)
        events, errors = validate(raw_events, envelope, SHOP, NOW)
    except IngestError as exc:
        return exc.code
    if errors:
        return f"errors: {errors}"
    return records(enrich(events, FIREFOX, country))


def assert_agree(raw: bytes) -> list[LogRecord] | None:
    got = fast(raw)
    if got is not None:
        assert got == full(raw)
    return got


def an_event(**fields: Any) -> dict[str, Any]:
    return {
        "event": "add_to_cart",
        "visitor_id": "v-1",
        "event_id": "00000000-0000-4000-8000-000000000001",
        "timestamp": NOW - 60_000,
        "properties": {"product": {"id": "sku-1", "price": 12.5}, "qty": 2},
        **fields,
    }


def body(*events: dict[str, Any], **envelope: Any) -> bytes:
    doc: Any = {"batch": list(events), **envelope} if len(events) != 1 else events[0]
    return json.dumps(doc).encode()  # the standard encoder: integers of any size


# What clients send takes the fast path, with the full path's records.


@pytest.mark.parametrize(
    "raw",
    [
        body(an_event()),
        body(an_event(), an_event(event="purchase", visitor_id="v-2")),
        body(an_event(), an_event(event="x"), sent_at=NOW - 2000, write_key="wk"),
        body(an_event(timestamp="2025-10-09T08:53:20.123+02:00", sent_at="2025-10-09T06:53:21Z")),
        body(an_event(event_id="ABCDEF00-0000-4000-8000-00000000000A")),
        body(an_event(visitor_id=12345, session_id=7, user_id=1.5, event=3)),
        body(an_event(visitor_id=10**30)),  # an id beyond 64 bits: its digits, exactly
        body(an_event(properties={"big": MAX_INTEGER, "small": MIN_INTEGER, "f": -0.0})),
        body(an_event(properties=None, timestamp=None, session_id=None)),
        b'{"event":"a","visitor_id":"v","event_id":"00000000-0000-4000-8000-000000000001",'
        b'"properties":{"k":1,"k":2}}',
    ],
)
def test_common_bodies_take_the_fast_path(raw: bytes) -> None:
    assert assert_agree(raw) is not None


def test_the_context_is_written_into_every_record() -> None:
    got = fast(body(an_event(), an_event()), country="DE")
    assert got is not None
    assert got == full(body(an_event(), an_event()), country="DE")
    assert {r.key for r in got} == {b"shop\x1fv-1"}
    assert decode(got[1].value).context == {
        "browser": "Firefox",
        "os": "Linux",
        "device": "desktop",
        "country": "DE",
    }


def test_a_missing_event_id_gets_a_fresh_uuid() -> None:
    raw = body(an_event(event_id=None), an_event(event_id=None))
    got = fast(raw)
    assert got is not None
    ids = [decode(r.value).event_id for r in got]
    assert len(set(ids)) == 2
    assert all(str(uuid.UUID(i)) == i for i in ids)


def nested(depth: int) -> dict[str, Any]:
    """Properties whose objects nest `depth` levels (the properties object is one)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# The limits hold on the fast path: what the full path refuses, it leaves to it.


@pytest.mark.parametrize(
    "raw",
    [
        body(an_event(properties=nested(MAX_JSON_DEPTH + 1))),
        body(an_event(properties={"n": MAX_INTEGER + 1})),
        body(an_event(properties={"n": [1, MIN_INTEGER - 1]})),
        body(an_event(properties={"s": "x" * MAX_PROPERTIES_BYTES})),
        body(an_event(event_id="{00000000-0000-4000-8000-000000000001}")),
        body(an_event(event_id="0000000000004000800000000000000a")),
        body(an_event(timestamp=946_684_799_999)),
        body(an_event(timestamp=NOW + 2 * 86_400_000)),
        body(an_event(), an_event(), sent_at="yesterday"),
        body(an_event(sent_at="yesterday")),
        body(an_event(event=" ")),
        body(an_event(event="e" * 201)),
        body(an_event(visitor_id=True)),
        body(an_event(session_id="s" * 201)),
        body(an_event(properties=[1])),
        body(an_event(), 1),
        b'{"batch": []}',
        body(*[an_event()] * (MAX_EVENTS + 1)),
        b'{"batch": null}',
        b"[]",
        b'{"event":"a","visitor_id":"v","properties":{"s":"\\ud800"}}',
        b'{"event":"a","visitor_id":"v","properties":{"n":1e400}}',
        b'{"event":"a","visitor_id":' + b"9" * 5000 + b"}",
        b"[" * 5000 + b"]" * 5000,
        # Unknown fields: msgspec would skip their values unread.
        body(an_event(extra_field={"anything": [1, 2]})),
        b'{"event":"a","visitor_id":"v","x":1e400}',
        b'{"event":"a","visitor_id":"v","\xff":1}',
        b'{"batch":[{"event":"a","visitor_id":"v"}],"note":"\xff\xfe"}',
        b'{"event":"a","visitor_id":"v","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_bodies_the_fast_path_leaves_to_the_full_path(raw: bytes) -> None:
    assert fast(raw) is None


def test_properties_may_nest_up_to_the_limit() -> None:
    assert assert_agree(body(an_event(properties=nested(MAX_JSON_DEPTH)))) is not None


# Generated bodies: whatever the fast path accepts, the full path writes the same.

_texts = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", " ", "e" * 200, "e" * 201, "x\u00e9\U0001f600"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
_times = st.one_of(
    st.none(),
    st.integers(min_value=NOW - 10**12, max_value=NOW + 10**9),
    st.floats(min_value=9e11, max_value=2e12),
    st.sampled_from(["2025-10-09T08:53:20Z", "2025-10-09 08:53", "1760000000000", "soon", ""]),
    st.booleans(),
)
_uuids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: f"urn:uuid:{u}"),
    st.sampled_from(["", "not-a-uuid", 7]),
)
_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=MIN_INTEGER - 2, max_value=MAX_INTEGER + 2),
        st.sampled_from([MIN_INTEGER, MIN_INTEGER - 1, MAX_INTEGER, MAX_INTEGER + 1, 10**40]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
_properties = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=4), _json, max_size=4),
    st.integers(min_value=MAX_JSON_DEPTH - 2, max_value=MAX_JSON_DEPTH + 2).map(nested),
    st.just([]),
)


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    fields = {
        "event": draw(_texts),
        "visitor_id": draw(_texts),
        "event_id": draw(_uuids),
        "timestamp": draw(_times),
        "sent_at": draw(st.one_of(st.none(), _times)),
        "session_id": draw(_texts),
        "user_id": draw(_texts),
        "properties": draw(_properties),
    }
    # Absent and null are not the same to every reader: drop some fields entirely. The
    # event id stays: without one, each path draws its own (test_a_missing_event_id...).
    drop = draw(st.sets(st.sampled_from(sorted(set(fields) - {"event_id"}))))
    return {k: v for k, v in fields.items() if k not in drop}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_events(), min_size=1, max_size=4),
    batch_sent_at=st.one_of(st.none(), _times),
    single=st.booleans(),
)
def test_generated_bodies_agree(
    events: list[dict[str, Any]], batch_sent_at: Any, single: bool
) -> None:
    doc: Any = {"batch": events}
    if batch_sent_at is not None:
        doc["sent_at"] = batch_sent_at
    if single:
        doc = events[0]
    assert_agree(json.dumps(doc).encode())


def test_the_record_format_is_unchanged() -> None:
    """Byte for byte what `schemas.events.encode` writes (the processor reads it)."""
    [record] = fast(body(an_event(properties={"b": 1, "a": [True, None, "é"]}))) or []
    assert orjson.loads(record.value)["props"] == {"b": 1, "a": [True, None, "é"]}
    assert record.value.startswith(b'{"v":1,"p":"shop","id":"00000000-0000-4000-8000-')


_EDGE_JSON = [
    *(
        "1e-400",
        "1e400",
        "-0.0",
        "0e5",
        "5e-324",
        "1.7976931348623157e308",
        "9007199254740993",
        "-0",
    ),
    *("00", "1.", ".5", "+1"),  # not JSON
    *(r'"\/"', r'"\u0000"', r'"\ud83d\ude00"', '"\x7f"', '"\u2028"', '"\t"'),
    *(r'"\ud83d"', r'"\ude00"', r'"\x"'),  # lone surrogates, bad escapes: not JSON
]


@pytest.mark.parametrize("value", _EDGE_JSON)
def test_edge_json_values_agree(value: str) -> None:
    """Numbers and strings the two parsers (msgspec, orjson) could read differently."""
    eid = '"event_id":"00000000-0000-4000-8000-000000000001"'
    assert_agree(f'{{"event":"a","visitor_id":{value},{eid}}}'.encode())
    assert_agree(f'{{"event":"a","visitor_id":"v",{eid},"properties":{{"k":{value}}}}}'.encode())
    assert_agree(f'{{"event":"a","visitor_id":"v",{eid},"unknown":{value}}}'.encode())
