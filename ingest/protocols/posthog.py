"""PostHog's capture API (posthog-js, posthog-python and the other SDKs' legacy `/batch/`
and `/e/` bodies) → our events. Pure: bytes or a decoded body in, `Translated` out. The
mapping table is docs/sdk-ingestion.md; it is kept here, once.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qs

from ingest.protocols.common import (
    BodyError,
    Merge,
    SdkEvent,
    Translated,
    copy_missing,
    event_id_for,
    id_string,
    text,
)
from schemas.events import parse_timestamp

NAME = "posthog"
# `compression` query values whose body is a gzip stream (posthog-js sends `gzip-js`).
GZIP_COMPRESSIONS = frozenset({"gzip", "gzip-js"})
# Events that merge two distinct ids into one person: accepted, kept as dead letters.
MERGE_EVENTS = frozenset({"$create_alias", "$merge_dangerously"})
EVENT_NAMES = {
    "$pageview": "page_view",
    "$screen": "screen_view",
    "$identify": "identify",
    "$groupidentify": "group",
}
# PostHog's property names → ours (the names our snippet's page views carry).
PROPERTY_NAMES = {
    "$current_url": "url",
    "$pathname": "path",
    "$referrer": "referrer",
    "$browser_language": "locale",
    "$timezone": "timezone",
}
# Transport fields, not event properties: the key and the ids we map to our own fields.
NOT_PROPERTIES = frozenset({"token", "api_key", "distinct_id"})
FIELD_NAMES = {
    "visitor_id": "distinct_id",
    "user_id": "distinct_id",
    "event_id": "uuid",
    "session_id": "properties.$session_id",
}


def unwrap(body: bytes, compression: str) -> bytes:
    """The JSON of a body posthog-js sent as a form (`data=<base64 or JSON>`) or as bare
    base64 (`compression=base64`); other bodies are returned as they are. Gzip (the
    header, or `compression=gzip-js`) is undone before this, under the body cap."""
    if body.startswith(b"data="):
        form = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        body = form.get("data", [""])[0].encode("latin-1")
        compression = compression or form.get("compression", [""])[0]
    stripped = body.lstrip()
    if compression == "base64" or (stripped and stripped[:1] not in (b"{", b"[")):
        try:
            return base64.b64decode(stripped, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise BodyError("data", f"is neither JSON nor base64: {exc}") from exc
    return body


def write_key(doc: object) -> str | None:
    """The project key in the body: `api_key` or `token` on the body, or on its first
    event, or that event's `properties.token` (posthog-js)."""
    candidates: list[object] = [doc]
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list) and doc["batch"]:
        candidates.append(doc["batch"][0])
    elif isinstance(doc, list) and doc:
        candidates.append(doc[0])
    for item in candidates:
        if not isinstance(item, dict):
            continue
        properties = item.get("properties")
        for value in (
            item.get("api_key"),
            item.get("token"),
            properties.get("token") if isinstance(properties, dict) else None,
        ):
            if text(value):
                return str(value)
    return None


def translate(
    doc: object, project_id: str, received_at_ms: int, sent_at_hint: str, max_events: int
) -> Translated:
    """A capture body (`{"batch": [...]}`, a list of events, or one event) → our events.
    `sent_at_hint`: posthog-js's send time (`_` in the query, epoch ms) when the body has
    no `sent_at`. Raises `BodyError` when the body as a whole is unusable."""
    sent_at: object = sent_at_hint or None
    sent_at_field = "_"
    if isinstance(doc, dict) and "batch" in doc:
        events = doc["batch"]
        if not isinstance(events, list):
            raise BodyError("batch", "must be a list of events")
        prefix = "batch"
    elif isinstance(doc, list):
        events, prefix = doc, ""
    elif isinstance(doc, dict):
        events, prefix = [doc], None
    else:
        raise BodyError("", "body must be an event, a list of events or {batch: [...]}")
    if isinstance(doc, dict) and doc.get("sent_at") is not None:
        sent_at, sent_at_field = doc["sent_at"], "sent_at"
    # The request's clock, which every event reads: refused once, by its own name, as our
    # envelope's `sent_at` is (ingest/pipeline.py `validate`).
    if sent_at is not None and parse_timestamp(sent_at) is None:
        raise BodyError(sent_at_field, "must be ISO-8601 or epoch milliseconds")
    if not events:
        raise BodyError(prefix or "", "has no events")
    if len(events) > max_events:
        raise BodyError(prefix or "", f"has more than {max_events} events", status=413)
    out = Translated()
    for index, raw in enumerate(events):
        path = "" if prefix is None else f"{prefix}[{index}]"
        if not isinstance(raw, dict):
            out.refuse(index, path, "", "an event must be a JSON object")
            continue
        _event(out, index, path, raw, project_id, received_at_ms, sent_at)
    return out


def _event(
    out: Translated,
    index: int,
    path: str,
    raw: dict[str, Any],
    project_id: str,
    received_at_ms: int,
    sent_at: object,
) -> None:
    properties = raw.get("properties")
    if properties is not None and not isinstance(properties, dict):
        out.refuse(index, path, "properties", "must be an object")
        return
    properties = properties or {}
    name = raw.get("event")
    distinct = raw.get("distinct_id", properties.get("distinct_id", raw.get("$distinct_id")))
    if id_string(distinct) is None:
        out.refuse(index, path, "distinct_id", "is required (a non-empty string)")
        return
    if name in MERGE_EVENTS:
        detail = f"{name} of {distinct!r}: identity merges are not supported"
        out.merges.append(Merge(str(id_string(distinct)), detail, raw))
        return

    names = dict(FIELD_NAMES)
    user: object = None
    if name == "$identify" and id_string(properties.get("$anon_distinct_id")) is not None:
        visitor: object = properties["$anon_distinct_id"]
        user = distinct
        names["visitor_id"] = "properties.$anon_distinct_id"
    elif id_string(properties.get("$device_id")) is not None:
        # posthog-js keeps one device id across identify: the visitor; a distinct id
        # other than it is the identified person.
        visitor = properties["$device_id"]
        names["visitor_id"] = "properties.$device_id"
        if id_string(distinct) != id_string(visitor):
            user = distinct
    else:
        visitor = distinct
        if name == "$identify":
            user = distinct

    ours = {k: v for k, v in properties.items() if k not in NOT_PROPERTIES}
    copy_missing(ours, properties, PROPERTY_NAMES)
    if ours.get("referrer") == "$direct":
        del ours["referrer"]
    for person in ("$set", "$set_once"):
        if isinstance(raw.get(person), dict):
            ours[person] = {**raw[person], **(ours.get(person) or {})}

    event: dict[str, Any] = {
        "event": EVENT_NAMES.get(name, name) if isinstance(name, str) else name,
        "visitor_id": visitor,
        "properties": ours,
    }
    if user is not None:
        event["user_id"] = user
    if "uuid" in raw:
        event["event_id"] = event_id_for(raw["uuid"], project_id)
    if raw.get("timestamp") is not None:
        event["timestamp"] = raw["timestamp"]
        if sent_at is not None:
            event["sent_at"] = sent_at
    elif isinstance(raw.get("offset"), int) and not isinstance(raw["offset"], bool):
        # posthog-js: how long ago the event happened, by the client's own clock.
        event["timestamp"] = received_at_ms - raw["offset"]
        names["timestamp"] = "offset"
    session = properties.get("$session_id")
    if session is not None:
        event["session_id"] = session
    user_agent = text(properties.get("$raw_user_agent")) or ""
    out.events.append(SdkEvent(index, path, event, names, user_agent))
