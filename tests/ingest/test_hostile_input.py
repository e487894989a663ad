"""Hostile bodies and headers at ingest: each has a defined 4xx naming the field, or is
kept exactly (docs/errors.md). In-process app, real embedded log."""

from __future__ import annotations

import gzip
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from schemas.properties import MAX_JSON_DEPTH
from tests.ingest.test_routes import AUTH, make_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


def stored(tmp_path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(tmp_path / "log" / "log.sqlite3")
    rows = conn.execute("SELECT value FROM records ORDER BY partition, offset").fetchall()
    return [orjson.loads(v) for (v,) in rows]


def post_raw(client: TestClient, body: bytes, **headers: str) -> Any:
    return client.post(
        "/v1/events", content=body, headers={**AUTH, "Content-Type": "application/json", **headers}
    )


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_gzip_with_trailing_garbage_is_refused(client: TestClient, tmp_path: Path) -> None:
    body = gzip.compress(orjson.dumps({"event": "x", "visitor_id": "v"}))
    for tail in (b"garbage", gzip.compress(b'{"event": "y", "visitor_id": "w"}')):
        r = post_raw(client, body + tail, **{"Content-Encoding": "gzip"})
        assert r.status_code == 400 and r.json()["error"] == "bad_gzip", r.text
    assert stored(tmp_path) == []
    assert post_raw(client, body, **{"Content-Encoding": "gzip"}).status_code == 202


def test_properties_nested_300_levels_are_a_400_naming_the_path(
    client: TestClient, tmp_path: Path
) -> None:
    r = client.post(
        "/v1/events",
        json={"event": "x", "visitor_id": "v", "properties": nested(300)},
        headers=AUTH,
    )
    assert r.status_code == 400, r.text
    (error,) = r.json()["errors"]
    assert error["field"] == "properties" + ".a" * MAX_JSON_DEPTH
    assert "nested deeper" in error["message"]
    # Lists count as levels too, and the limit itself is accepted.
    deep_list: Any = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep_list = [deep_list]
    r = client.post(
        "/v1/events", json={"event": "x", "visitor_id": "v", "properties": {"l": deep_list}},
        headers=AUTH,
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["errors"][0]["field"].startswith("properties.l[0]")
    ok = {"event": "x", "visitor_id": "v", "properties": nested(MAX_JSON_DEPTH)}
    assert client.post("/v1/events", json=ok, headers=AUTH).status_code == 202
    assert stored(tmp_path)[0]["props"] == nested(MAX_JSON_DEPTH)


def test_json_nested_past_the_parser_limit_is_invalid_json(client: TestClient) -> None:
    body = b'{"event":"x","visitor_id":"v","properties":{"a":' + b"[" * 2000 + b"]" * 2000 + b"}}"
    r = post_raw(client, body)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    # Deep and with a long digit run (read twice, by two parsers): still a 400.
    body = b'{"p":' + b"[" * 1000 + b"12345678901234567890" + b"]" * 1000 + b"}"
    r = post_raw(client, body)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json", r.text


def test_integers_beyond_64_bits_are_refused_by_field(client: TestClient, tmp_path: Path) -> None:
    for value in (2**64, -(2**63) - 1, 10**40):
        body = b'{"event":"x","visitor_id":"v","properties":{"cart":{"total":%d}}}' % value
        r = post_raw(client, body)
        assert r.status_code == 400, r.text
        (error,) = r.json()["errors"]
        assert error["field"] == "properties.cart.total" and "64 bits" in error["message"]
    # In a batch, only that event is refused (207) and the others are stored.
    body = b'{"batch":[{"event":"x","visitor_id":"v","properties":{"n":%d}},' % 2**70
    body += b'{"event":"y","visitor_id":"w"}]}'
    r = post_raw(client, body)
    assert r.status_code == 207 and r.json()["errors"][0]["index"] == 0
    assert [e["e"] for e in stored(tmp_path)] == ["y"]


def test_integers_within_64_bits_and_long_ids_are_kept_exactly(
    client: TestClient, tmp_path: Path
) -> None:
    edges = {"max": 2**64 - 1, "min": -(2**63), "big": 2**63 + 12345}
    long_id = 123456789012345678901234567890
    body = b'{"event":"x","visitor_id":%d,"properties":%s}' % (long_id, orjson.dumps(edges))
    assert post_raw(client, body).status_code == 202
    (event,) = stored(tmp_path)
    assert event["props"] == edges
    # A numeric id is a string on the log, digit for digit (a float would round it).
    assert event["vid"] == str(long_id)


@pytest.mark.parametrize(
    "timestamp",
    [
        10**30,
        -(10**30),
        1e300,
        "99999999999999999999999999",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "-1",
    ],
)
def test_extreme_timestamps_are_a_400_naming_the_field(
    client: TestClient, timestamp: object
) -> None:
    r = client.post(
        "/v1/events", json={"event": "x", "visitor_id": "v", "timestamp": timestamp}, headers=AUTH
    )
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == "timestamp"


def test_extreme_sent_at_is_refused_or_ignored_never_a_500(client: TestClient) -> None:
    for sent_at in (10**30, -(10**30), "9999-12-31T23:59:59-23:59"):
        r = client.post(
            "/v1/events",
            json={"event": "x", "visitor_id": "v", "timestamp": 1_700_000_000_000,
                  "sent_at": sent_at},
            headers=AUTH,
        )  # fmt: skip
        assert r.status_code == 400, r.text
        body = r.json()
        # A single event's `sent_at` is also the request's: refused at the top level then.
        field = body["field"] if "field" in body else body["errors"][0]["field"]
        assert field in ("sent_at", "timestamp")


@pytest.mark.parametrize(
    "key",
    [
        "Bearer clé-ñ".encode(),
        b"Bearer \xff\xfe\x80",
        b"Bearer wk_test\xc3",
        "Bearer " + "k" * 10_000,
    ],
)
def test_non_ascii_and_non_utf8_write_keys_are_a_401(client: TestClient, key: str | bytes) -> None:
    r = client.post(
        "/v1/events",
        content=orjson.dumps({"event": "x", "visitor_id": "v"}),
        headers={"Authorization": key, "Content-Type": "application/json"},  # type: ignore[dict-item]
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_write_key"
