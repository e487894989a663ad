"""The Segment tracking API (also RudderStack's): `track`, `page`, `screen`, `identify`,
`group`, `alias` and `batch` messages → our events. Pure: a decoded body in, `Translated`
out. The mapping table is docs/sdk-ingestion.md; it is kept here, once.
"""

from __future__ import annotations

from typing import Any

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

NAME = "segment"
# Single-message routes name their type; `batch` (and `import`, its older name) carry it
# per message.
TYPES = ("track", "page", "screen", "identify", "group", "alias")
BATCH_ROUTES = ("batch",)

# Our event name for each message type but `track` (which names its own) and `alias`.
EVENT_OF_TYPE = {
    "page": "page_view",
    "screen": "screen_view",
    "identify": "identify",
    "group": "group",
}
# context.page.* → properties (the names our snippet's page views carry).
PAGE_CONTEXT = {"url": "url", "path": "path", "title": "title", "referrer": "referrer"}
PAGE_CONTEXT_SEARCH = {"search": "search"}
# context.campaign.* (Segment's parse of utm_*) → properties.utm_*.
CAMPAIGN_CONTEXT = {
    "source": "utm_source",
    "medium": "utm_medium",
    "name": "utm_campaign",
    "term": "utm_term",
    "content": "utm_content",
}
OTHER_CONTEXT = {"locale": "locale", "timezone": "timezone"}
# Our field → the SDK's, to name a field validation refuses.
FIELD_NAMES = {
    "visitor_id": "anonymousId",
    "user_id": "userId",
    "event_id": "messageId",
    "sent_at": "sentAt",
    "session_id": "context.sessionId",
}


def write_key(doc: object) -> str | None:
    """The write key sent in the body (`writeKey`), for clients that send no basic auth."""
    return text(doc.get("writeKey")) if isinstance(doc, dict) else None


def translate(doc: object, route: str, project_id: str, max_events: int) -> Translated:
    """One request body of `route` (a type, or `batch`) → our events. Raises `BodyError`
    when the body as a whole is unusable."""
    if not isinstance(doc, dict):
        raise BodyError("", "body must be a JSON object")
    out = Translated()
    if route not in BATCH_ROUTES:
        _message(out, 0, "", doc, route, doc, project_id)
        return out
    batch = doc.get("batch")
    if not isinstance(batch, list):
        raise BodyError("batch", "must be a list of messages")
    if not batch:
        raise BodyError("batch", "has no messages")
    if len(batch) > max_events:
        raise BodyError("batch", f"has more than {max_events} messages", status=413)
    # The batch's clock, which each message without its own reads: refused once, by its
    # own name, as our envelope's `sent_at` is (ingest/pipeline.py `validate`).
    if doc.get("sentAt") is not None and parse_timestamp(doc["sentAt"]) is None:
        raise BodyError("sentAt", "must be ISO-8601 or epoch milliseconds")
    for index, message in enumerate(batch):
        path = f"batch[{index}]"
        if not isinstance(message, dict):
            out.refuse(index, path, "", "a message must be a JSON object")
            continue
        kind = message.get("type")
        if kind not in TYPES:
            out.refuse(index, path, "type", f"must be one of {', '.join(TYPES)}")
            continue
        _message(out, index, path, message, str(kind), doc, project_id)
    return out


def _message(
    out: Translated,
    index: int,
    path: str,
    message: dict[str, Any],
    kind: str,
    envelope: dict[str, Any],
    project_id: str,
) -> None:
    context = message.get("context")
    if context is None:
        context = envelope.get("context") if message is not envelope else None
    if context is not None and not isinstance(context, dict):
        out.refuse(index, path, "context", "must be an object")
        return
    context = context or {}
    anonymous = message.get("anonymousId")
    user = message.get("userId")
    if kind == "alias":
        previous = id_string(message.get("previousId")) or id_string(anonymous)
        if previous is None or id_string(user) is None:
            out.refuse(index, path, "previousId" if previous is None else "userId", "is required")
            return
        detail = f"alias {previous!r} to {user!r}: identity merges are not supported"
        out.merges.append(Merge(previous, detail, message))
        return
    if anonymous is None and user is None:
        out.refuse(index, path, "anonymousId", "is required (or userId)")
        return

    names = dict(FIELD_NAMES)
    if kind == "track":
        name: object = message.get("event")
        properties = message.get("properties")
    elif kind in ("identify", "group"):
        name = EVENT_OF_TYPE[kind]
        properties = message.get("traits")
        names["properties"] = "traits"
    else:
        name = EVENT_OF_TYPE[kind]
        properties = message.get("properties")
    if properties is not None and not isinstance(properties, dict):
        out.refuse(index, path, names.get("properties", "properties"), "must be an object")
        return
    properties = dict(properties or {})
    if kind in ("page", "screen"):
        copy_missing(properties, message, {"name": "name", "category": "category"})
    if kind == "group":
        copy_missing(properties, message, {"groupId": "group_id"})
    page = context.get("page")
    copy_missing(properties, page, PAGE_CONTEXT)
    copy_missing(properties, page, PAGE_CONTEXT_SEARCH)
    copy_missing(properties, context.get("campaign"), CAMPAIGN_CONTEXT)
    copy_missing(properties, context, OTHER_CONTEXT)

    event: dict[str, Any] = {
        "event": name,
        "visitor_id": anonymous if anonymous is not None else user,
        "properties": properties,
    }
    if user is not None:
        event["user_id"] = user
    if "messageId" in message:
        event["event_id"] = event_id_for(message["messageId"], project_id)
    timestamp = message.get("timestamp", message.get("originalTimestamp"))
    if timestamp is not None:
        event["timestamp"] = timestamp
        if "timestamp" not in message:
            names["timestamp"] = "originalTimestamp"
    sent_at = message.get("sentAt", envelope.get("sentAt"))
    if sent_at is not None:
        event["sent_at"] = sent_at
    session = context.get("sessionId")
    if session is not None:
        event["session_id"] = session
    out.events.append(SdkEvent(index, path, event, names, text(context.get("userAgent")) or ""))
