"""The ingest steps one by one: body limits, JSON shapes, keys, per-event validation."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from funnelstream.config import Project, ProjectConfig
from funnelstream.key_store import KeyStore
from funnelstream.log import LogProducer, LogRecord, LogUnavailable
from ingest.pipeline import (
    IngestError,
    Result,
    append,
    authenticate,
    country_from_headers,
    drop_bots,
    enrich,
    parse_json,
    read_body,
    records,
    validate,
)
from schemas.events import Event, decode

NOW = 1_760_000_000_000
LIMIT = 1000
SHOP = Project("shop", SecretStr("wk_shop_0123456789"), SecretStr("rk_shop_0123456789"))
BLOG = Project("blog", SecretStr("wk_blog_0123456789"), SecretStr("rk_blog_0123456789"))
CONFIG = ProjectConfig((SHOP, BLOG), ())
KEYS = KeyStore.config_only(CONFIG)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def refused(fn: Any, *args: Any) -> IngestError:
    with pytest.raises(IngestError) as info:
        fn(*args)
    return info.value


# read_body


def test_plain_body_passes_through() -> None:
    assert read_body(b"x" * LIMIT, "", LIMIT) == b"x" * LIMIT
    assert read_body(b"{}", " Identity ", LIMIT) == b"{}"


def test_plain_body_over_the_limit() -> None:
    err = refused(read_body, b"x" * (LIMIT + 1), "", LIMIT)
    assert (err.status, err.code, err.message) == (413, "body_too_large", "body exceeds 1000 bytes")


def test_gzip_body_is_decompressed() -> None:
    assert read_body(gzip.compress(b"x" * LIMIT), "gzip", LIMIT) == b"x" * LIMIT
    assert read_body(gzip.compress(b"{}"), "GZIP ", LIMIT) == b"{}"


def test_compressed_size_is_checked_before_decompressing() -> None:
    incompressible = gzip.compress(os.urandom(LIMIT))
    assert len(incompressible) > LIMIT
    err = refused(read_body, incompressible, "gzip", LIMIT)
    assert (err.status, err.code, err.message) == (413, "body_too_large", "body exceeds 1000 bytes")


def test_decompressed_size_over_the_limit() -> None:
    err = refused(read_body, gzip.compress(b"x" * (LIMIT + 1)), "gzip", LIMIT)
    assert (err.status, err.code) == (413, "body_too_large")
    assert err.message == "decompressed body exceeds 1000 bytes"


def test_gzip_bomb_is_capped() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < LIMIT * 100
    err = refused(read_body, bomb, "gzip", len(bomb))
    assert (err.status, err.code) == (413, "body_too_large")


@pytest.mark.parametrize(
    "body",
    [
        b"not gzip at all",
        gzip.compress(b'{"event": "x"}')[:-8],  # trailer (CRC, size) cut off
        gzip.compress(b'{"event": "x"}')[:15],
        b"",
        zlib.compress(b"{}"),  # zlib, not gzip
    ],
)
def test_bad_gzip(body: bytes) -> None:
    err = refused(read_body, body, "gzip", LIMIT)
    assert (err.status, err.code) == (400, "bad_gzip")
    assert err.message.startswith("body is not valid gzip: ")


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "gzip, br"])
def test_unsupported_encoding(encoding: str) -> None:
    err = refused(read_body, b"{}", encoding, LIMIT)
    assert (err.status, err.code) == (415, "unsupported_encoding")
    assert err.message == f"Content-Encoding {encoding!r}: only gzip is accepted"


# parse_json


def test_single_event() -> None:
    assert parse_json(b'{"event": "a", "write_key": "k"}', 10) == (
        [{"event": "a", "write_key": "k"}],
        {"event": "a", "write_key": "k"},
    )


def test_batch_with_envelope() -> None:
    body = {"batch": [{"event": "a"}, {"event": "b"}], "write_key": "k", "sent_at": 5}
    assert parse_json(orjson.dumps(body), 2) == ([{"event": "a"}, {"event": "b"}], body)


def test_batch_items_are_not_checked_here() -> None:
    assert parse_json(b'{"batch": [1, "x"]}', 10)[0] == [1, "x"]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b'{"batch": []}', 400, "empty_batch", "batch"),
        (b'{"batch": {"event": "a"}}', 400, "invalid_batch", "batch"),
        (b'{"batch": null}', 400, "invalid_batch", "batch"),
        (b'[{"event": "a"}]', 400, "invalid_shape", ""),
        (b'"event"', 400, "invalid_shape", ""),
        (b"null", 400, "invalid_shape", ""),
        (b'{"batch": [{}, {}, {}]}', 413, "batch_too_large", "batch"),
    ],
)
def test_parse_json_refusals(body: bytes, status: int, code: str, field: str | None) -> None:
    err = refused(parse_json, body, 2)
    assert (err.status, err.code, err.field) == (status, code, field)


def test_batch_at_the_limit_is_accepted() -> None:
    assert len(parse_json(b'{"batch": [{}, {}]}', 2)[0]) == 2


def test_error_body() -> None:
    err = refused(parse_json, b'{"batch": []}', 2)
    assert err.body() == {
        "error": "empty_batch",
        "message": "batch has no events",
        "field": "batch",
    }
    assert IngestError(400, "c", "m").body() == {"error": "c", "message": "m"}


# authenticate


def test_header_key() -> None:
    assert authenticate(KEYS, "Bearer wk_blog_0123456789", {}) is BLOG
    assert authenticate(KEYS, "bearer  wk_blog_0123456789 ", {}) is BLOG


def test_header_key_wins_over_the_body_key() -> None:
    assert (
        authenticate(KEYS, "Bearer wk_blog_0123456789", {"write_key": "wk_shop_0123456789"}) is BLOG
    )


def test_body_key() -> None:
    assert authenticate(KEYS, "", {"write_key": "wk_shop_0123456789"}) is SHOP


@pytest.mark.parametrize(
    ("authorization", "envelope", "code"),
    [
        ("", {}, "missing_write_key"),
        ("", {"write_key": ""}, "missing_write_key"),
        ("", {"write_key": 123}, "missing_write_key"),
        ("Bearer ", {}, "missing_write_key"),
        ("Basic dXNlcjpwYXNz", {}, "missing_write_key"),
        ("Bearer nope", {}, "invalid_write_key"),
        ("", {"write_key": "nope"}, "invalid_write_key"),
        # Keys that cannot be anyone's: no match, never a 500.
        ("Bearer wk_shop_01234567é9", {}, "invalid_write_key"),
        ("Bearer \xff\xfe", {}, "invalid_write_key"),
        ("", {"write_key": "wk_\ud800"}, "invalid_write_key"),
    ],
)
def test_authenticate_refusals(authorization: str, envelope: dict[str, Any], code: str) -> None:
    err = refused(authenticate, KEYS, authorization, envelope)
    assert (err.status, err.code, err.field) == (401, code, "write_key")


def test_a_read_key_sent_to_ingest_is_the_wrong_scope() -> None:
    err = refused(authenticate, KEYS, "Bearer rk_shop_0123456789", {})
    assert (err.status, err.code, err.field) == (403, "insufficient_scope", "write_key")
    assert "scope read" in err.message


# validate


def test_validate_reports_errors_per_index() -> None:
    raw = [
        {"event": "a", "visitor_id": "v"},
        {"visitor_id": "v", "timestamp": "bad"},
        "nope",
        {"event": "b", "visitor_id": "v", "timestamp": NOW - 1000},
    ]
    events, errors = validate(raw, {}, SHOP, NOW)
    assert [(e.event, e.project_id, e.timestamp_ms) for e in events] == [
        ("a", "shop", NOW),
        ("b", "shop", NOW - 1000),
    ]
    assert errors == [
        {"index": 1, "field": "event", "message": "is required"},
        {"index": 1, "field": "timestamp", "message": "must be ISO-8601 or epoch milliseconds"},
        {"index": 2, "field": "", "message": "an event must be a JSON object"},
    ]


def test_validate_applies_the_batch_sent_at() -> None:
    raw = [{"event": "a", "visitor_id": "v", "timestamp": NOW - 10_000}]
    events, errors = validate(raw, {"sent_at": NOW - 3000}, SHOP, NOW)
    assert errors == []
    assert events[0].timestamp_ms == NOW - 7000


def test_validate_refuses_a_bad_batch_sent_at() -> None:
    err = refused(validate, [], {"sent_at": "later"}, SHOP, NOW)
    assert (err.status, err.code, err.field) == (400, "invalid_sent_at", "sent_at")


# drop_bots, enrich, append, Result


def event(n: int = 1, **context: str) -> Event:
    return Event(
        "shop", f"00000000-0000-4000-8000-{n:012d}", "view", "v", NOW, NOW, context=context
    )


CRAWLERS = frozenset({"known_bot", "headless_browser"})


def test_drop_bots_drops_only_the_configured_reasons() -> None:
    events = [event(1), event(2)]
    googlebot = "Googlebot/2.1 (+http://www.google.com/bot.html)"
    assert drop_bots(events, googlebot, CRAWLERS) == ([], 2)
    assert drop_bots(events, "Mozilla/5.0 HeadlessChrome/120.0", CRAWLERS) == ([], 2)
    # Server-side tracking and imports: kept unless asked for.
    assert drop_bots(events, "curl/8.0", CRAWLERS) == (events, 0)
    assert drop_bots(events, "", CRAWLERS) == (events, 0)
    assert drop_bots(events, "curl/8.0", frozenset({"http_client"})) == ([], 2)
    assert drop_bots(events, "", frozenset({"empty_user_agent"})) == ([], 2)
    assert drop_bots(events, FIREFOX, CRAWLERS) == (events, 0)
    assert drop_bots(events, googlebot, frozenset()) == (events, 0)
    assert drop_bots([], googlebot, CRAWLERS) == ([], 0)


def test_enrich_adds_context_without_overwriting_the_clients() -> None:
    [enriched] = enrich([event(device="tv")], FIREFOX)
    assert enriched.context == {"browser": "Firefox", "os": "Linux", "device": "tv"}
    [plain] = enrich([event()], FIREFOX)
    assert plain.context == {"browser": "Firefox", "os": "Linux", "device": "desktop"}
    [located] = enrich([event()], FIREFOX, "DE")
    assert located.context["country"] == "DE"


def test_country_comes_from_the_first_cdn_header_with_a_code() -> None:
    names = ("cf-ipcountry", "x-country-code")
    assert country_from_headers({"cf-ipcountry": "de"}, names) == "DE"
    assert country_from_headers({"x-country-code": "FR"}, names) == "FR"
    # Unknown and Tor exit markers, malformed values: no country, next header not tried.
    assert country_from_headers({"cf-ipcountry": "XX", "x-country-code": "FR"}, names) == ""
    assert country_from_headers({"cf-ipcountry": "T1"}, names) == ""
    assert country_from_headers({"cf-ipcountry": "Germany", "x-country-code": "FR"}, names) == "FR"
    assert country_from_headers({"cf-ipcountry": "D1"}, names) == ""
    assert country_from_headers({"cf-ipcountry": "DE"}, ()) == ""


class Producer(LogProducer):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.records: list[LogRecord] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def append(self, records: Sequence[LogRecord]) -> None:
        if self.fail:
            raise LogUnavailable("broker down")
        self.records.extend(records)


async def test_append_keys_records_by_project_and_visitor() -> None:
    producer = Producer()
    events = [event(1), event(2)]
    await append(producer, records(events), retry_after=2)
    assert [(r.key, decode(r.value), r.timestamp_ms) for r in producer.records] == [
        (b"shop\x1fv", events[0], NOW),
        (b"shop\x1fv", events[1], NOW),
    ]


async def test_append_failure_is_a_503_with_retry_after() -> None:
    with pytest.raises(IngestError) as info:
        await append(Producer(fail=True), records([event()]), retry_after=7)
    err = info.value
    assert (err.status, err.code, err.retry_after) == (503, "log_unavailable", 7)
    assert err.message == "events not stored, retry: broker down"


def test_result() -> None:
    assert Result(3, 0, []).status() == 202
    assert Result(3, 0, []).body() == {"accepted": 3}
    errors = [{"index": 0, "field": "event", "message": "is required"}]
    assert Result(1, 2, errors).status() == 207
    assert Result(1, 2, errors).body() == {"accepted": 1, "dropped": 2, "errors": errors}
