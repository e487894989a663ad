"""Ingest of vendor SDK requests (Segment, RudderStack, PostHog), in the order a request
moves:

    header_key    write key: HTTP basic-auth user (Segment, RudderStack) or bearer, checked
                  before the body is read
    decode        size limit, gzip (header, or PostHog's `compression=gzip-js`), PostHog's
                  form and base64 bodies, JSON; or 400/413/415
    body_key      else the body's write key (`writeKey`; PostHog `api_key` / `token`)
    translate     the protocol's messages → our events (ingest/protocols/, pure)
    records       validate each (schemas/events.py, the rule of `POST /v1/events`), enrich
                  it with its own user agent, name each fault in the SDK's field names;
                  identity merges become dead-letter records (`unsupported_merge`)

then the service appends durably, as for our own endpoint, and only then answers 200.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from funnelstream.config import Project
from funnelstream.log import LogRecord
from ingest import pipeline
from ingest.pipeline import IngestError, Request
from ingest.protocols import posthog, segment
from ingest.protocols.common import BodyError, Translated, field_name
from schemas.events import Event, encode_dead_letter, parse_event, partition_key

# Where each protocol's SDKs put the write key in the body (named in a 401).
KEY_FIELD = {segment.NAME: "writeKey", posthog.NAME: "api_key"}
UNSUPPORTED_MERGE = "unsupported_merge"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class SdkCall:
    protocol: str  # segment.NAME or posthog.NAME
    route: str  # Segment: a message type or "batch"; PostHog: "capture"
    # PostHog's query string: `compression` and `_` (the client's send time, epoch ms).
    compression: str = ""
    sent_at_hint: str = ""


@dataclass(frozen=True, slots=True)
class SdkResult:
    accepted: int
    dead_lettered: int
    dropped: int
    errors: list[dict[str, Any]]


def decode(call: SdkCall, request: Request, limit: int) -> Any:
    encoding = request.content_encoding
    compression = call.compression.strip().lower()
    if call.protocol == posthog.NAME and compression not in ("", "base64"):
        if compression not in posthog.GZIP_COMPRESSIONS:
            raise IngestError(
                415,
                "unsupported_encoding",
                f"compression {compression!r}: gzip, gzip-js and base64 are accepted",
                field="compression",
            )
        encoding = encoding or "gzip"
    elif call.protocol == posthog.NAME and request.body.startswith(GZIP_MAGIC):
        # posthog-js sends some gzip bodies (its first page view) with neither a header
        # nor a query parameter saying so; PostHog's own capture sniffs them too.
        encoding = encoding or "gzip"
    raw = pipeline.read_body(request.body, encoding, limit)
    if call.protocol == posthog.NAME:
        try:
            raw = posthog.unwrap(raw, compression)
        except BodyError as exc:
            raise IngestError(exc.status, "invalid_body", exc.message, field=exc.field) from exc
    return pipeline.loads_exact(raw)


def header_key(authorization: str) -> str:
    """The write key in the headers: basic-auth user, or bearer token; "" if none."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "basic" and credentials:
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        key = user.partition(":")[0]
        if key:
            return key
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return ""


def body_key(call: SdkCall, doc: Any) -> str:
    """The write key where the protocol's SDKs put it in the body; "" if none."""
    found = segment.write_key(doc) if call.protocol == segment.NAME else posthog.write_key(doc)
    return found or ""


def translate(
    call: SdkCall, doc: Any, project_id: str, request: Request, max_events: int
) -> Translated:
    try:
        if call.protocol == segment.NAME:
            return segment.translate(doc, call.route, project_id, max_events)
        return posthog.translate(
            doc, project_id, request.received_at_ms, call.sent_at_hint, max_events
        )
    except BodyError as exc:
        code = "batch_too_large" if exc.status == 413 else "invalid_body"
        raise IngestError(exc.status, code, exc.message, field=exc.field) from exc


def records(
    translated: Translated, project: Project, request: Request
) -> tuple[list[LogRecord], list[dict[str, Any]]]:
    """The log records of the valid messages (events, then merges as dead letters) and,
    per refused message, its index and the SDK field at fault."""
    errors = list(translated.errors)
    events: list[Event] = []
    for message in translated.events:
        parsed = parse_event(
            message.event, project_id=project.id, received_at_ms=request.received_at_ms
        )
        if not isinstance(parsed, Event):
            errors.extend(
                {
                    "index": message.index,
                    "field": field_name(message.path, message.field_names, e.field),
                    "message": e.message,
                }
                for e in parsed
            )
            continue
        # The browser's own user agent (a server SDK relays it in the message) before the
        # request's, which is the SDK's.
        pipeline.enrich([parsed], message.user_agent or request.user_agent, request.country)
        events.append(parsed)
    out = pipeline.records(events)
    out.extend(
        LogRecord(
            partition_key(project.id, merge.visitor_id),
            encode_dead_letter(project.id, UNSUPPORTED_MERGE, merge.detail, merge.payload),
            request.received_at_ms,
        )
        for merge in translated.merges
    )
    errors.sort(key=lambda e: int(e["index"]))
    return out, errors
