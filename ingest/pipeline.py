"""The ingest stage, in the order a request moves:

    read_body     size limit (before and after gzip), or 413
    decode_fast   the whole body typed in one compiled pass (schemas/events_fast.py),
                  or None: then parse_json
    parse_json    one event object or {"batch": [...]}, or 400
    authenticate  write key from `Authorization: Bearer` or the body, or 401 (403: a
                  valid key of another scope)
    fast_records  every event valid: its log records, written straight from the typed
                  body; or None: then validate, enrich, records
    validate      per event: which index, which field, why
    enrich        received time, user agent → browser/os/device, CDN header → country
    drop_bots     typed reason + metric; the client is told how many were dropped
    append        durably to the log, keyed by (project, visitor); only then 202

Every refusal is an `IngestError` with a status, a stable code and the offending field.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from funnelstream import metrics
from funnelstream.config import Project
from funnelstream.key_store import KeyStore
from funnelstream.keys import WrongScope
from funnelstream.log import LogProducer, LogRecord, LogUnavailable
from ingest.useragent import bot_reason, parse_user_agent
from schemas import events_fast
from schemas.events import Event, FieldError, encode, parse_event, parse_timestamp
from schemas.events_fast import WireBody

T = TypeVar("T")


class IngestError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.errors = errors
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.errors is not None:
            out["errors"] = self.errors
        return out


@dataclass(frozen=True, slots=True)
class Request:
    body: bytes
    content_encoding: str
    authorization: str
    user_agent: str
    # ISO 3166 alpha-2 code from a CDN header (`country_from_headers`), "" if unknown.
    country: str = ""
    received_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass(frozen=True, slots=True)
class Result:
    accepted: int
    dropped: int
    errors: list[dict[str, Any]]

    def status(self) -> int:
        return 207 if self.errors else 202

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accepted": self.accepted}
        if self.dropped:
            out["dropped"] = self.dropped
        if self.errors:
            out["errors"] = self.errors
        return out


def read_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    if len(body) > limit:
        raise IngestError(413, "body_too_large", f"body exceeds {limit} bytes")
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise IngestError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r}: only gzip is accepted"
        )
    # Decompress with a cap so a small gzip bomb cannot exhaust memory.
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise IngestError(400, "bad_gzip", f"body is not valid gzip: {exc}") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise IngestError(413, "body_too_large", f"decompressed body exceeds {limit} bytes")
    if not decompressor.eof:
        raise IngestError(400, "bad_gzip", "body is not valid gzip: truncated")
    if decompressor.unused_data:
        # Bytes after the gzip stream (a second member included) are not what the client
        # meant to send, or not what we would read: refused rather than silently ignored.
        raise IngestError(400, "bad_gzip", "body has data after the end of the gzip stream")
    return out


def decode_fast(raw: bytes, max_events: int) -> WireBody | None:
    """The body typed when it is well formed and of the right types, else None (then
    `parse_json` says what is wrong, or reads a form only it reads)."""
    return events_fast.decode_body(raw, max_events)


def envelope_of(body: WireBody) -> dict[str, Any]:
    """What `authenticate` reads of a typed body."""
    return {} if body.write_key is None else {"write_key": body.write_key}


def parse_json(raw: bytes, max_events: int) -> tuple[list[Any], dict[str, Any]]:
    """→ (events, envelope). The envelope carries `write_key` and `sent_at` if present."""
    doc = loads_exact(raw)
    if isinstance(doc, dict) and "batch" in doc:
        batch = doc["batch"]
        if not isinstance(batch, list):
            raise IngestError(400, "invalid_batch", "batch must be a list", field="batch")
        if not batch:
            raise IngestError(400, "empty_batch", "batch has no events", field="batch")
        if len(batch) > max_events:
            raise IngestError(
                413, "batch_too_large", f"batch has more than {max_events} events", field="batch"
            )
        return batch, doc
    if isinstance(doc, dict):
        return [doc], doc
    raise IngestError(
        400, "invalid_shape", 'body must be an event object or {"batch": [...]}', field=""
    )


# An integer literal of 19 digits or more may be beyond 64 bits.
_LONG_DIGITS = re.compile(rb"\d{19}")


def loads_exact(raw: bytes) -> Any:
    """The JSON body with every integer as sent. orjson reads an integer beyond 64 bits as
    a float (altering it silently); only when a long digit run is present, the body is read
    again by the standard parser, which keeps it exactly, so validation can refuse it by
    field (schemas/events.py `properties_problem`) or keep it exactly as an id string."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc
    if not _LONG_DIGITS.search(raw):
        return doc
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise IngestError(400, "invalid_json", "body is nested too deep") from exc
    except ValueError as exc:  # an integer of more than 4300 digits
        raise IngestError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc


def authenticate(keys: KeyStore, authorization: str, envelope: dict[str, Any]) -> Project:
    key = ""
    if authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    elif isinstance(envelope.get("write_key"), str):
        key = envelope["write_key"]
    if not key:
        raise IngestError(401, "missing_write_key", "send the project write key", field="write_key")
    found = keys.authorize(key, "write")
    if found is None:
        raise IngestError(401, "invalid_write_key", "unknown write key", field="write_key")
    if isinstance(found, WrongScope):
        raise IngestError(
            403,
            "insufficient_scope",
            f"sending events needs a key of scope write; the key sent has scope {found.held}",
            field="write_key",
        )
    return found


def fast_records(
    body: WireBody, project: Project, received_at_ms: int, context: dict[str, str]
) -> list[LogRecord] | None:
    """The log records of a body whose events are all valid; None when one is not, or
    is in a form only `validate` reads (then it runs and names each field at fault)."""
    encoded = events_fast.encode_batch(body, project.id, received_at_ms, context)
    if encoded is None:
        return None
    return [LogRecord(key, value, received_at_ms) for key, value in encoded]


def validate(
    raw_events: list[Any], envelope: dict[str, Any], project: Project, received_at_ms: int
) -> tuple[list[Event], list[dict[str, Any]]]:
    batch_sent_at = None
    if envelope.get("sent_at") is not None:
        batch_sent_at = parse_timestamp(envelope["sent_at"])
        if batch_sent_at is None:
            raise IngestError(
                400, "invalid_sent_at", "must be ISO-8601 or epoch milliseconds", field="sent_at"
            )
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_events):
        parsed = parse_event(
            raw,
            project_id=project.id,
            received_at_ms=received_at_ms,
            batch_sent_at_ms=batch_sent_at,
        )
        if isinstance(parsed, Event):
            events.append(parsed)
        else:
            errors.extend(_error(index, e) for e in parsed)
    return events, errors


def full_records(
    raw_events: list[Any], envelope: dict[str, Any], project: Project, request: Request
) -> tuple[list[LogRecord], list[dict[str, Any]]]:
    """validate → enrich → records: the valid events' records and, per refused event, its
    index and field; 400 when no event is valid."""
    events, errors = validate(raw_events, envelope, project, request.received_at_ms)
    if not events and errors:
        raise IngestError(400, "invalid_events", "no event in the request is valid", errors=errors)
    events = enrich(events, request.user_agent, request.country)
    return records(events), errors


def _error(index: int, error: FieldError) -> dict[str, Any]:
    return {"index": index, "field": error.field, "message": error.message}


def drop_bots(
    events: list[T], user_agent: str, drop_reasons: frozenset[str]
) -> tuple[list[T], int]:
    """Drop a request's events when its user agent is a bot for one of `drop_reasons`.

    By default only crawlers and headless browsers are dropped: HTTP libraries and empty
    user agents are how server-side tracking and history imports arrive.
    """
    if not drop_reasons or not events:
        return events, 0
    reason = bot_reason(user_agent)
    if reason is None or reason not in drop_reasons:
        return events, 0
    metrics.INGEST_DROPPED.labels(reason).inc(len(events))
    return [], len(events)


# Codes CDNs use for "no country": unknown (XX) and Tor exits (T1).
_NOT_A_COUNTRY = frozenset({"XX", "T1"})


def country_from_headers(headers: Mapping[str, str], names: Iterable[str]) -> str:
    """The first of `names` holding a two-letter country code, upper-cased; "" if none."""
    for name in names:
        value = headers.get(name, "").strip().upper()
        if len(value) == 2 and value.isascii() and value.isalpha():
            return "" if value in _NOT_A_COUNTRY else value
    return ""


def context_for(user_agent: str, country: str = "") -> dict[str, str]:
    """What ingest adds to every event of a request (a fresh dict per call)."""
    info = parse_user_agent(user_agent)
    context = {"browser": info.browser, "os": info.os, "device": info.device_type}
    if country:
        context["country"] = country
    return context


def enrich(events: list[Event], user_agent: str, country: str = "") -> list[Event]:
    if not events:
        return events
    context = context_for(user_agent, country)
    for e in events:
        # Each event owns its context dict (fresh from parse_event): fill it in place
        # rather than copying the frozen event.
        for key, value in context.items():
            e.context.setdefault(key, value)
    return events


def records(events: list[Event]) -> list[LogRecord]:
    return [LogRecord(e.partition_key(), encode(e), e.received_at_ms) for e in events]


async def append(producer: LogProducer, records: list[LogRecord], retry_after: int) -> None:
    started = time.monotonic()
    try:
        await producer.append(records)
    except LogUnavailable as exc:
        metrics.INGEST_UNAVAILABLE.inc()
        raise IngestError(
            503, "log_unavailable", f"events not stored, retry: {exc}", retry_after=retry_after
        ) from exc
    metrics.INGEST_APPEND_SECONDS.observe(time.monotonic() - started)
