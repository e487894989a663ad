"""Vendor SDK routes over HTTP (in-process app, real embedded log): what each answers and
what lands on the log."""

from __future__ import annotations

import base64
import gzip
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from schemas.events import InvalidMessage, decode
from tests.ingest.test_routes import DownLog, make_client, read_log

BASIC = {"Authorization": "Basic " + base64.b64encode(b"wk_test:").decode()}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


def test_segment_track_with_basic_auth_is_stored(client: TestClient, tmp_path: Path) -> None:
    r = client.post(
        "/v1/track",
        json={
            "anonymousId": "a1",
            "userId": "u1",
            "event": "Order Completed",
            "properties": {"revenue": 10},
            "messageId": "m-1",
            "context": {"userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"},
        },
        headers=BASIC,
    )
    assert r.status_code == 200 and r.json() == {"success": True, "accepted": 1}
    [stored] = read_log(tmp_path)
    assert (stored["vid"], stored["uid"], stored["e"]) == ("a1", "u1", "Order Completed")
    assert stored["ctx"]["browser"] == "Firefox"  # type: ignore[index]


def test_segment_batch_with_key_in_body_and_gzip(client: TestClient, tmp_path: Path) -> None:
    body = orjson.dumps(
        {
            "writeKey": "wk_test",
            "batch": [
                {"type": "page", "anonymousId": "a1", "context": {"page": {"url": "https://x/"}}},
                {"type": "identify", "anonymousId": "a1", "userId": "u1"},
            ],
        }
    )
    r = client.post("/v1/batch", content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 2
    events = {str(e["e"]): e for e in read_log(tmp_path)}
    assert events["page_view"]["props"] == {"url": "https://x/"}
    assert events["identify"]["uid"] == "u1"


def test_segment_refusals_name_the_field(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/v1/track", json={"anonymousId": "a", "event": "x"})
    assert r.status_code == 401 and r.json()["field"] == "writeKey"
    assert r.json()["code"] == "missing_write_key"
    r = client.post(
        "/v1/batch",
        json={
            "batch": [
                {"type": "track", "anonymousId": "a", "event": "ok"},
                {"type": "track", "anonymousId": "a", "event": "x", "timestamp": "yesterday"},
            ]
        },
        headers=BASIC,
    )
    # The valid message is stored; the other refused by name, with a status no SDK retries.
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {
            "index": 1,
            "field": "batch[1].timestamp",
            "message": "must be ISO-8601 or epoch milliseconds",
        }
    ]
    assert r.json()["accepted"] == 1 and len(read_log(tmp_path)) == 1
    r = client.post(
        "/v1/track", json={"event": "x", "messageId": 5.5, "userId": "u"}, headers=BASIC
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "messageId"


def test_alias_is_delivered_and_kept_as_a_dead_letter(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/v1/alias", json={"previousId": "a1", "userId": "u1"}, headers=BASIC)
    assert r.status_code == 200 and r.json() == {"success": True, "accepted": 0, "dead_lettered": 1}
    [record] = read_log(tmp_path)
    with pytest.raises(InvalidMessage) as exc:
        decode(orjson.dumps(record))
    assert exc.value.reason == "unsupported_merge"


def test_posthog_bodies_as_the_sdks_send_them(client: TestClient, tmp_path: Path) -> None:
    events = [
        {
            "event": "$pageview",
            "properties": {"token": "wk_test", "distinct_id": "d1", "$current_url": "https://x/p"},
        }
    ]
    raw = orjson.dumps(events)
    # posthog-js: gzip-js in the query, no Content-Encoding
    r = client.post("/e/?compression=gzip-js&_=1760000000000", content=gzip.compress(raw))
    assert r.status_code == 200 and r.json() == {"status": 1, "accepted": 1}
    # legacy form: data=<base64>
    form = b"data=" + base64.b64encode(raw).replace(b"+", b"%2B").replace(b"=", b"%3D")
    r = client.post(
        "/i/v0/e/", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 200
    # server SDKs: {"api_key", "batch"} to /batch/
    r = client.post(
        "/batch/", json={"api_key": "wk_test", "batch": [{"event": "x", "distinct_id": "d2"}]}
    )
    assert r.status_code == 200
    stored = read_log(tmp_path)
    assert [e["e"] for e in stored].count("page_view") == 2
    assert {str(e["props"].get("url")) for e in stored if e["e"] == "page_view"} == {"https://x/p"}  # type: ignore[union-attr]
    r = client.post("/e/?compression=lz64", content=b"xx")
    assert r.status_code == 415 and r.json()["field"] == "compression"
    r = client.post("/batch/", json={"batch": [{"event": "x", "distinct_id": "d"}]})
    assert r.status_code == 401 and r.json()["field"] == "api_key"


def test_posthog_flags_answer_no_flags(client: TestClient) -> None:
    for path in ("/decide/?v=3", "/flags/?v=2"):
        r = client.post(path, json={"token": "wk_test", "distinct_id": "d"})
        assert r.status_code == 200
        assert r.json()["featureFlags"] == {} and r.json()["flags"] == {}


def test_sdk_body_over_the_cap_is_refused(tmp_path: Path) -> None:
    with make_client(tmp_path, max_body_bytes=2048) as c:
        big = {"anonymousId": "a", "event": "x", "properties": {"p": "y" * 4000}}
        r = c.post("/v1/track", json=big, headers=BASIC)
        assert r.status_code == 413


def test_log_down_answers_503_with_retry_after(client: TestClient, tmp_path: Path) -> None:
    """Nothing stored, nothing answered 2xx: the SDKs retry a 503 with the same ids."""
    client.app.state.ingest.producer = DownLog()  # type: ignore[attr-defined]
    for path, body in (
        ("/v1/batch", {"batch": [{"type": "track", "anonymousId": "a", "event": "x"}]}),
        ("/batch/", {"api_key": "wk_test", "batch": [{"event": "x", "distinct_id": "d"}]}),
        ("/v1/alias", {"previousId": "a", "userId": "u"}),
    ):
        r = client.post(path, json=body, headers=BASIC)
        assert r.status_code == 503 and "Retry-After" in r.headers, (path, r.text)
        assert r.json()["code"] == "log_unavailable"
    assert read_log(tmp_path) == []


def test_a_merge_carrying_an_integer_beyond_64_bits_is_kept_as_a_dead_letter(
    client: TestClient, tmp_path: Path
) -> None:
    body = b'{"previousId": "a1", "userId": "u1", "context": {"n": 123456789012345678901234567}}'
    r = client.post(
        "/v1/alias", content=body, headers={**BASIC, "Content-Type": "application/json"}
    )
    assert r.status_code == 200 and r.json()["dead_lettered"] == 1
    conn = sqlite3.connect(tmp_path / "log" / "log.sqlite3")
    [(value,)] = conn.execute("SELECT value FROM records").fetchall()
    conn.close()
    with pytest.raises(InvalidMessage) as exc:
        decode(value)  # the bytes the processor reads
    assert exc.value.reason == "unsupported_merge"
    assert b"123456789012345678901234567" in value  # the call kept exactly


def test_a_header_key_is_checked_before_the_body_is_decoded(client: TestClient) -> None:
    wrong = {"Authorization": "Basic " + base64.b64encode(b"wk_nope:").decode()}
    r = client.post("/v1/batch", content=b"not json", headers=wrong)
    assert r.status_code == 401 and r.json()["field"] == "writeKey"
    r = client.post("/v1/batch", content=b"not json", headers=BASIC)
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
