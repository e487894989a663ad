"""The Segment translation, pure: messages in, our events (and named refusals) out."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.protocols import segment
from ingest.protocols.common import MESSAGE_ID_NAMESPACE, BodyError, event_id_for, field_name
from schemas.events import Event, parse_event

NOW = 1_760_000_000_000


def one(doc: dict[str, Any], route: str = "batch") -> dict[str, Any]:
    out = segment.translate(doc, route, "shop", 100)
    assert not out.errors, out.errors
    [event] = out.events
    return event.event


def test_page_becomes_a_page_view_with_url_campaign_and_locale() -> None:
    event = one(
        {
            "anonymousId": "a1",
            "name": "Tee",
            "properties": {"title": "A tee"},
            "context": {
                "page": {"url": "https://s.example/p?utm_source=x", "path": "/p", "title": "no"},
                "campaign": {"source": "news", "medium": "email", "name": "spring"},
                "locale": "en-GB",
                "userAgent": "Mozilla/5.0 Firefox/120.0",
            },
            "messageId": "ajs-next-1",
            "timestamp": "2025-10-09T10:00:00.000Z",
            "sentAt": "2025-10-09T10:00:01.000Z",
        },
        route="page",
    )
    assert event["event"] == "page_view"
    assert event["visitor_id"] == "a1" and "user_id" not in event
    assert event["properties"] == {
        "title": "A tee",  # the message's own property wins over the context's
        "name": "Tee",
        "url": "https://s.example/p?utm_source=x",
        "path": "/p",
        "utm_source": "news",
        "utm_medium": "email",
        "utm_campaign": "spring",
        "locale": "en-GB",
    }
    assert event["event_id"] == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "shop\x1fajs-next-1"))
    assert event["sent_at"] == "2025-10-09T10:00:01.000Z"


def test_batch_types_and_identity() -> None:
    out = segment.translate(
        {
            "sentAt": "2025-10-09T10:00:00Z",
            "batch": [
                {"type": "track", "event": "Order Completed", "userId": "u1", "anonymousId": "a1"},
                {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "g"}},
                {"type": "track", "event": "Signed In", "userId": "u2"},
                {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}},
                {"type": "screen", "anonymousId": "a2", "name": "Home"},
                {"type": "alias", "previousId": "a1", "userId": "u1"},
            ],
        },
        "batch",
        "shop",
        100,
    )
    events = [e.event for e in out.events]
    assert [e["event"] for e in events] == [
        "Order Completed",
        "identify",
        "Signed In",
        "group",
        "screen_view",
    ]
    assert (events[0]["visitor_id"], events[0]["user_id"]) == ("a1", "u1")
    assert events[1]["properties"] == {"plan": "g"}
    assert (events[2]["visitor_id"], events[2]["user_id"]) == ("u2", "u2")
    assert events[3]["properties"] == {"name": "Acme", "group_id": "g1"}
    assert events[4]["properties"] == {"name": "Home"}
    assert all(e["sent_at"] == "2025-10-09T10:00:00Z" for e in events)
    [merge] = out.merges
    assert merge.visitor_id == "a1" and "alias" in merge.detail


def test_refusals_name_the_sdk_field() -> None:
    out = segment.translate(
        {
            "batch": [
                {"type": "track", "event": "x"},
                {"type": "nope"},
                "not an object",
                {"type": "track", "anonymousId": "a", "event": "x", "properties": [1]},
                {"type": "alias", "userId": "u"},
            ]
        },
        "batch",
        "shop",
        100,
    )
    assert [(e["index"], e["field"]) for e in out.errors] == [
        (0, "batch[0].anonymousId"),
        (1, "batch[1].type"),
        (2, "batch[2]"),
        (3, "batch[3].properties"),
        (4, "batch[4].previousId"),
    ]
    with pytest.raises(BodyError) as exc:
        segment.translate({"batch": [{}] * 3}, "batch", "shop", 2)
    assert exc.value.status == 413 and exc.value.field == "batch"
    with pytest.raises(BodyError):
        segment.translate([1], "track", "shop", 2)


def test_a_bad_batch_clock_is_refused_once_by_its_own_name() -> None:
    """The batch's `sentAt` is one field of the body, not one of each message's."""
    batch = [{"type": "track", "anonymousId": "a", "event": "x"}] * 2
    with pytest.raises(BodyError) as exc:
        segment.translate({"sentAt": "yesterday", "batch": batch}, "batch", "shop", 100)
    assert exc.value.status == 400 and exc.value.field == "sentAt"
    # A message's own clock is still its own field.
    out = segment.translate(
        {"sentAt": 1760000000000, "batch": [{**batch[0], "sentAt": "no"}]}, "batch", "shop", 100
    )
    [message] = out.events
    parsed = parse_event(message.event, project_id="shop", received_at_ms=NOW)
    assert not isinstance(parsed, Event)
    assert [field_name(message.path, message.field_names, e.field) for e in parsed] == [
        "batch[0].sentAt"
    ]


def test_every_translated_event_is_one_our_validation_accepts() -> None:
    """What the translation makes is our own format: parse_event takes it as it is."""
    event = one({"event": "x", "anonymousId": "a", "timestamp": NOW - 5000}, route="track")
    parsed = parse_event(event, project_id="shop", received_at_ms=NOW)
    assert isinstance(parsed, Event) and parsed.timestamp_ms == NOW - 5000


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@given(st.text(min_size=1).filter(lambda t: not is_uuid(t)))
def test_other_message_ids_map_to_one_uuid_per_project(message_id: str) -> None:
    first = event_id_for(message_id, "shop")
    assert first == event_id_for(message_id, "shop")  # a resend dedupes
    assert isinstance(first, str) and is_uuid(first)
    # another project's message with the same id is another event
    assert event_id_for(message_id, "other") != first


@given(st.uuids())
def test_uuid_message_ids_are_kept(value: uuid.UUID) -> None:
    assert event_id_for(str(value).upper(), "shop") == str(value)


OUR_FIELDS = {"visitor_id", "user_id", "event_id", "session_id"}
ids = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=1),
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([*segment.TYPES, "bogus"]),
        "anonymousId": ids,
        "userId": ids,
        "messageId": ids,
        "event": ids,
        "timestamp": st.one_of(ids, st.just("2025-10-09T10:00:00Z"), st.integers(0, 2 * NOW)),
        "sentAt": st.one_of(ids, st.just("2025-10-09T10:00:00Z")),
        "properties": st.one_of(
            st.none(), st.dictionaries(st.text(max_size=3), ids, max_size=2), ids
        ),
        "context": st.one_of(st.none(), st.just({"sessionId": 5, "page": {"url": 1}}), ids),
    },
)


@given(st.lists(messages, min_size=1, max_size=4))
def test_every_message_is_stored_or_refused_by_its_sdk_field(batch: list[dict[str, Any]]) -> None:
    """Each message of a batch ends exactly one way: an event our validation accepts, a
    merge, or refusals naming the field in Segment's names, never in ours."""
    out = segment.translate({"batch": batch}, "batch", "shop", 100)
    refused = {e["index"] for e in out.errors}
    for message in out.events:
        parsed = parse_event(message.event, project_id="shop", received_at_ms=NOW)
        if not isinstance(parsed, Event):
            refused.add(message.index)
            for error in parsed:
                name = field_name(message.path, message.field_names, error.field)
                assert name.startswith(f"batch[{message.index}]")
                assert name.split(".", 1)[1].split(".")[0] not in OUR_FIELDS, name
    assert all(e["field"].startswith(f"batch[{e['index']}]") for e in out.errors)
    merged = len(out.merges)
    converted = {m.index for m in out.events}
    assert len(refused | converted) + merged == len(batch)
