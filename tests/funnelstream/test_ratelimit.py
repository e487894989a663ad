"""Rate limits through the real ingest app on a real HTTP server: exact under concurrent
requests, refilled when the window ends, 429 with Retry-After naming the limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from funnelstream import metrics
from funnelstream.app import build_app
from funnelstream.config import IngestSettings, ProcessorSettings
from funnelstream.ratelimit import RateLimit, parse_rate_limit
from tests.fixtures.uvicorn_thread import serving

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_test"
read_key = "rk_test"
"""
AUTH = {"Authorization": "Bearer wk_test"}
EVENT = {"event": "page_view", "visitor_id": "v"}


@pytest.fixture
def ingest(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Ingest alone (embedded log) with the settings the test passes (indirect param)."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    settings = IngestSettings(data_dir=tmp_path, config_file=config, **overrides)
    app = build_app(settings, ProcessorSettings(data_dir=tmp_path), frozenset({"ingest"}))
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def with_settings(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("ingest", [overrides], indirect=True, ids=[""])


async def burst(base: str, count: int, **kwargs: Any) -> list[httpx.Response]:
    """`count` requests at once, each on its own connection."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        return list(
            await asyncio.gather(*(client.post("/v1/events", **kwargs) for _ in range(count)))
        )


def refused(limit: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "funnelstream_rate_limited_total", {"route_kind": "ingest", "limit": limit}
        )
        or 0.0
    )


def check_refusals(responses: list[httpx.Response], limit: str, window: int) -> None:
    for r in responses:
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited"
        assert limit in r.json()["message"]
        assert 1 <= int(r.headers["retry-after"]) <= window


@with_settings(ingest_rate_limit_per_address="20 per 2 seconds")
def test_per_address_exact_under_concurrency_and_refilled(ingest: str) -> None:
    name = "ingest_rate_limit_per_address"
    before = refused(name)
    browser = {**AUTH, "Origin": "https://shop.example"}
    responses = asyncio.run(burst(ingest, 60, json=EVENT, headers=browser))
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 20 + [429] * 40
    check_refusals([r for r in responses if r.status_code == 429], name, 2)
    # A page on the shop's origin may read the refusal and its Retry-After (CORS).
    refusal = next(r for r in responses if r.status_code == 429)
    assert refusal.headers["access-control-allow-origin"] == "*"
    assert "retry-after" in refusal.headers["access-control-expose-headers"].lower()
    assert refused(name) - before == 40
    # The window ends within Retry-After; then the full amount passes again, exactly.
    time.sleep(max(int(r.headers.get("retry-after", 0)) for r in responses) + 0.1)
    again = sorted(r.status_code for r in asyncio.run(burst(ingest, 30, json=EVENT, headers=AUTH)))
    assert again == [202] * 20 + [429] * 10


@with_settings(ingest_rate_limit_per_address="", ingest_rate_limit_per_key="15 per 2 seconds")
def test_per_key_counts_header_and_beacon_keys_together(ingest: str) -> None:
    beacon = orjson.dumps({"batch": [EVENT], "write_key": "wk_test"})
    headers = {"Content-Type": "text/plain"}

    async def both() -> list[httpx.Response]:
        with_header, from_body = await asyncio.gather(
            burst(ingest, 10, json=EVENT, headers=AUTH),
            burst(ingest, 10, content=beacon, headers=headers),
        )
        return with_header + from_body

    responses = asyncio.run(both())
    assert sorted(r.status_code for r in responses) == [202] * 15 + [429] * 5
    check_refusals([r for r in responses if r.status_code == 429], "ingest_rate_limit_per_key", 2)
    # An unknown key is refused as such and never counted against anyone's bucket.
    r = httpx.post(f"{ingest}/v1/events", json=EVENT, headers={"Authorization": "Bearer no"})
    assert r.status_code == 401


@with_settings(ingest_rate_limit_per_address="3 per 10 seconds", trusted_proxies=["127.0.0.1"])
def test_a_trusted_proxy_forwards_the_client_address(ingest: str) -> None:
    def post(forwarded: str) -> int:
        headers = {**AUTH, "X-Forwarded-For": forwarded}
        return httpx.post(f"{ingest}/v1/events", json=EVENT, headers=headers).status_code

    # A client's own entry (left) is never believed: the proxy's (right) one counts.
    assert [post(f"10.9.9.{i}, 203.0.113.7") for i in range(4)] == [202, 202, 202, 429]
    assert post("203.0.113.8") == 202


@with_settings(ingest_rate_limit_per_address="3 per 10 seconds")
def test_without_trusted_proxies_the_header_is_ignored(ingest: str) -> None:
    codes = [
        httpx.post(
            f"{ingest}/v1/events",
            json=EVENT,
            headers={**AUTH, "X-Forwarded-For": f"198.51.100.{i}"},
        ).status_code
        for i in range(4)
    ]
    assert codes == [202, 202, 202, 429]


def test_limit_texts() -> None:
    assert parse_rate_limit("") == ()
    assert [i.amount for i in parse_rate_limit("100/second;3000/minute")] == [100, 3000]
    for bad in ("lots", "0/second", "10/fortnight"):
        with pytest.raises(ValueError):
            parse_rate_limit(bad)
    with pytest.raises(ValueError, match="ingest_rate_limit_per_key"):
        IngestSettings(ingest_rate_limit_per_key="lots")
    assert RateLimit.from_setting("x", "5 per 2 seconds").describe() == "5 per 2 second"
