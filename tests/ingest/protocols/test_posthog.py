"""The PostHog translation, pure: capture bodies in, our events (and named refusals) out."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from ingest.protocols import posthog
from ingest.protocols.common import BodyError

NOW = 1_760_000_000_000


def translate(doc: Any, hint: str = "") -> posthog.Translated:
    return posthog.translate(doc, "shop", NOW, hint, 100)


def test_pageview_becomes_a_page_view_with_its_url() -> None:
    out = translate(
        [
            {
                "event": "$pageview",
                "uuid": "01890f6e-3b44-7000-8000-000000000001",
                "timestamp": "2025-10-09T10:00:00Z",
                "properties": {
                    "token": "wk",
                    "distinct_id": "d1",
                    "$device_id": "d1",
                    "$current_url": "https://s.example/p",
                    "$pathname": "/p",
                    "$referrer": "$direct",
                    "$session_id": "s1",
                    "$raw_user_agent": "Mozilla/5.0 Firefox/120.0",
                    "utm_source": "news",
                },
            }
        ],
        hint=str(NOW - 10),
    )
    [sdk_event] = out.events
    event = sdk_event.event
    assert event["event"] == "page_view"
    assert event["visitor_id"] == "d1" and "user_id" not in event
    assert event["properties"]["url"] == "https://s.example/p"
    assert event["properties"]["path"] == "/p"
    assert "referrer" not in event["properties"] and "token" not in event["properties"]
    assert event["session_id"] == "s1"
    assert event["sent_at"] == str(NOW - 10)
    assert event["event_id"] == "01890f6e-3b44-7000-8000-000000000001"
    assert sdk_event.user_agent == "Mozilla/5.0 Firefox/120.0"


def test_a_bad_request_clock_is_refused_once_by_its_own_name() -> None:
    """The send time (the body's `sent_at`, else posthog-js's `_` in the query) is one
    field of the request, not one of each event's."""
    batch = [{"event": "buy", "distinct_id": "d", "timestamp": "2025-10-09T10:00:00Z"}] * 2
    with pytest.raises(BodyError) as exc:
        translate({"batch": batch, "sent_at": "yesterday"})
    assert exc.value.status == 400 and exc.value.field == "sent_at"
    with pytest.raises(BodyError) as exc:
        translate(batch, hint="soon")
    assert exc.value.field == "_"
    with pytest.raises(BodyError) as exc:
        translate({**batch[0], "sent_at": ["x"]})
    assert exc.value.field == "sent_at"
    # A null sent_at leaves the query's clock in force.
    out = translate({"batch": batch, "sent_at": None}, hint=str(NOW - 10))
    assert all(e.event["sent_at"] == str(NOW - 10) for e in out.events)


def test_identity_identify_device_and_server_events() -> None:
    out = translate(
        {
            "api_key": "wk",
            "sent_at": "2025-10-09T10:00:00Z",
            "batch": [
                {
                    "event": "$identify",
                    "distinct_id": "u1",
                    "properties": {"$anon_distinct_id": "a1"},
                    "$set": {"plan": "gold"},
                },
                {"event": "buy", "distinct_id": "u1", "properties": {"$device_id": "a1"}},
                {"event": "buy", "distinct_id": "srv"},
                {"event": "$create_alias", "distinct_id": "a1", "properties": {"alias": "u1"}},
            ],
        }
    )
    events = [e.event for e in out.events]
    assert (events[0]["event"], events[0]["visitor_id"], events[0]["user_id"]) == (
        "identify",
        "a1",
        "u1",
    )
    assert events[0]["properties"]["$set"] == {"plan": "gold"}
    assert (events[1]["visitor_id"], events[1]["user_id"]) == ("a1", "u1")
    assert events[2]["visitor_id"] == "srv" and "user_id" not in events[2]
    [merge] = out.merges
    assert merge.visitor_id == "a1"


def test_offset_sets_the_time_from_the_receive_clock() -> None:
    [event] = translate({"event": "x", "distinct_id": "d", "offset": 1500}).events
    assert event.event["timestamp"] == NOW - 1500


def test_refusals_name_the_sdk_field() -> None:
    out = translate(
        {"batch": [{"event": "x"}, 3, {"event": "x", "distinct_id": "d", "properties": 1}]}
    )
    assert [(e["index"], e["field"]) for e in out.errors] == [
        (0, "batch[0].distinct_id"),
        (1, "batch[1]"),
        (2, "batch[2].properties"),
    ]
    with pytest.raises(BodyError):
        translate({"batch": []})
    with pytest.raises(BodyError):
        translate("x")


def test_write_key_from_body_event_or_properties() -> None:
    assert posthog.write_key({"api_key": "k1", "batch": []}) == "k1"
    assert posthog.write_key([{"event": "x", "properties": {"token": "k2"}}]) == "k2"
    assert posthog.write_key({"event": "x", "token": "k3"}) == "k3"
    assert posthog.write_key([]) is None


def test_unwrap_form_and_base64_bodies() -> None:
    doc = [{"event": "x", "distinct_id": "d"}]
    encoded = base64.b64encode(orjson.dumps(doc))
    assert orjson.loads(posthog.unwrap(encoded, "base64")) == doc
    form = b"data=" + quote(encoded.decode()).encode() + b"&compression=base64"
    assert orjson.loads(posthog.unwrap(form, "")) == doc
    assert posthog.unwrap(orjson.dumps(doc), "") == orjson.dumps(doc)
    with pytest.raises(BodyError) as exc:
        posthog.unwrap(b"data=%%%not base64", "base64")
    assert exc.value.field == "data"
