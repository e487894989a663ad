"""Limits on a real `funnelstream serve` process: body caps on every route kind, refused
before the body is read (the server's peak memory does not move), and the query API's
rate limits per key and per client address, exact under concurrent requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from funnelstream.config import AD_HOC_ENVELOPE_BYTES
from schemas.funnels import MAX_DEFINITION_BYTES, MAX_VALUE_CHARS
from tests.e2e.server import ADMIN, READ, WRITE, Server
from tests.fixtures.raw_http import stream_body

pytestmark = pytest.mark.clickhouse

HUGE = 8 * 1024 * 1024
QUERY_CAP = MAX_DEFINITION_BYTES + AD_HOC_ENVELOPE_BYTES
JSON = {**READ, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}
KEY_LIMIT = 25
ADDRESS_LIMIT = 10
WINDOW = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(
        tmp_path_factory.mktemp("limits") / "data",
        FUNNELSTREAM_QUERY_RATE_LIMIT_PER_KEY=f"{KEY_LIMIT} per {WINDOW} seconds",
        FUNNELSTREAM_QUERY_RATE_LIMIT_PER_ADDRESS=f"{ADDRESS_LIMIT} per {WINDOW} seconds",
        # The test client stands in for a proxy: each request names its own client.
        FUNNELSTREAM_TRUSTED_PROXIES='["127.0.0.1"]',
    ).start()
    yield s
    s.stop()


def peak_rss_kb(server: Server) -> int:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def client(n: int) -> dict[str, str]:
    """A distinct client address per test and request, so buckets never mix."""
    return {"X-Forwarded-For": f"198.51.{n // 250}.{n % 250 + 1}"}


ROUTES = [
    ("/v1/events", WRITE, 1024 * 1024, "max_body_bytes"),
    ("/v1/funnels", ADMIN, QUERY_CAP, "query_max_body_bytes"),
    ("/v1/funnels/report", READ, QUERY_CAP, "query_max_body_bytes"),
]


@pytest.mark.parametrize(("path", "key", "cap", "setting"), ROUTES)
@pytest.mark.parametrize("declare_length", [True, False])
def test_a_huge_body_is_refused_without_being_read(
    server: Server, path: str, key: dict[str, str], cap: int, setting: str, declare_length: bool
) -> None:
    n = ROUTES.index((path, key, cap, setting)) * 2 + declare_length
    headers = {**key, **client(n), "Content-Type": "application/json"}
    before = peak_rss_kb(server)
    answer = stream_body(
        "127.0.0.1", server.port, path, headers, HUGE, declare_length=declare_length
    )
    assert answer.status == 413, answer
    assert answer.body == {
        "error": "body_too_large",
        "message": f"request body exceeds {cap} bytes ({setting})",
    }
    # Refused on the declared length, or as the stream passes the cap: most of the 8 MB
    # were never sent, and the server's peak memory stayed where it was (an 8 MB
    # definition parsed used to cost ~780 MB).
    assert answer.bytes_sent < cap + 4 * 1024 * 1024
    assert peak_rss_kb(server) - before < 32 * 1024


def definition(values: int, fid: str = "big") -> dict[str, Any]:
    step = {"event": "buy", "filters": [{"property": "sku", "op": "in", "value": []}]}
    step["filters"][0]["value"] = ["s" * (MAX_VALUE_CHARS - 6) + f"{i:06d}" for i in range(values)]
    return {"id": fid, "steps": [{"event": "view"}, step]}


def test_the_largest_definitions_fit_and_one_byte_more_is_named(server: Server) -> None:
    # The largest accepted definitions fit the cap, as a saved funnel and in a report.
    fits = definition(MAX_DEFINITION_BYTES // MAX_VALUE_CHARS - 1)
    body = orjson.dumps(fits)
    assert MAX_DEFINITION_BYTES - 2 * MAX_VALUE_CHARS < len(body) <= MAX_DEFINITION_BYTES
    r = httpx.post(f"{server.base}/v1/funnels", content=body, headers={**ADMIN_JSON, **client(100)})
    assert r.status_code == 201, r.text
    adhoc = orjson.dumps({"funnel": fits, "from": "2020-01-01T00:00:00Z", "to": "2030-01-01"})
    r = httpx.post(
        f"{server.base}/v1/funnels/report", content=adhoc, headers={**JSON, **client(101)}
    )
    assert r.status_code == 200, r.text
    # Over the definition's limit but under the body cap: refused by the rule, by name.
    bigger = definition(MAX_DEFINITION_BYTES // MAX_VALUE_CHARS - 1, "over")
    bigger["steps"][1]["filters"].append({"property": "k", "value": "v" * MAX_VALUE_CHARS})
    over = orjson.dumps(bigger)
    assert MAX_DEFINITION_BYTES < len(over) <= QUERY_CAP
    r = httpx.post(f"{server.base}/v1/funnels", content=over, headers={**ADMIN_JSON, **client(102)})
    assert r.status_code == 400, r.text
    detail = r.json()
    assert (detail["error"], detail["field"]) == ("definition_too_large", "definition")


async def burst(server: Server, count: int, first_client: int | None) -> list[httpx.Response]:
    """`count` concurrent list requests with the read key: each from its own client
    address, or all from one when `first_client` is None."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=30) as c:
        return list(
            await asyncio.gather(
                *(
                    c.get(
                        "/v1/funnels",
                        headers={
                            **READ,
                            **client(200 if first_client is None else first_client + i),
                        },
                    )
                    for i in range(count)
                )
            )
        )


def check(responses: list[httpx.Response], passed: int, setting: str) -> None:
    assert sorted(r.status_code for r in responses) == [200] * passed + [429] * (
        len(responses) - passed
    )
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"] == "rate_limited"
            assert setting in r.json()["message"]
            assert 1 <= int(r.headers["retry-after"]) <= WINDOW


def test_query_rate_limit_per_key_is_exact_under_concurrency(server: Server) -> None:
    time.sleep(WINDOW)  # a fresh window for the read key
    check(asyncio.run(burst(server, 60, first_client=1000)), KEY_LIMIT, "query_rate_limit_per_key")
    time.sleep(WINDOW)  # the window ends: the full amount again
    check(asyncio.run(burst(server, 30, first_client=2000)), KEY_LIMIT, "query_rate_limit_per_key")


def test_query_rate_limit_per_address_is_exact_under_concurrency(server: Server) -> None:
    time.sleep(WINDOW)
    responses = asyncio.run(burst(server, 30, first_client=None))
    check(responses, ADDRESS_LIMIT, "query_rate_limit_per_address")
    metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
    assert (
        'funnelstream_rate_limited_total{limit="query_rate_limit_per_address",route_kind="query"}'
        in metrics
    )
