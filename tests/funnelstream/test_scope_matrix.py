"""Every route of the assembled app against the scope it needs, in ONE table.

For each route: no key, a key of every scope of the project, and the right scope's key
of another project. A route missing from `ROUTES` fails `test_every_route_is_classified`:
whoever adds a route says here which key opens it (and how another project's key fares).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from funnelstream.app import build_app
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import IngestSettings, ProcessorSettings
from funnelstream.sdk_paths import POSTHOG_CAPTURE_PATHS, POSTHOG_FLAG_PATHS, SEGMENT_PATHS

pytestmark = pytest.mark.clickhouse

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_shop_key"
read_key = "rk_shop_key"
admin_key = "ak_shop_key"

[[projects]]
id = "blog"
write_key = "wk_blog_key"
read_key = "rk_blog_key"
admin_key = "ak_blog_key"

[[funnels]]
id = "checkout"
project = "shop"
window_seconds = 3600
steps = [{ event = "view" }, { event = "buy" }]
"""
KEYS = {
    "shop": {"write": "wk_shop_key", "read": "rk_shop_key", "admin": "ak_shop_key"},
    "blog": {"write": "wk_blog_key", "read": "rk_blog_key", "admin": "ak_blog_key"},
}
FUNNEL = {"id": "saved", "window_seconds": 60, "steps": [{"event": "a"}, {"event": "b"}]}
RANGE = {"from": "2025-01-01T00:00:00Z", "to": "2025-01-02T00:00:00Z"}


@dataclass(frozen=True)
class Needs:
    """What a route needs, and what a request to it carries."""

    scope: Literal["write", "read", "admin", "none"]
    # Another project's key of the right scope: "own_view" (it sees its own project: any
    # answer but 401/403/5xx) or "not_found" (the path names this project's object: 404).
    other_project: Literal["own_view", "not_found"] = "own_view"
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)


# (method, path) → what it needs. Path parameters: {funnel_id} is shop's config funnel,
# {key_id} a stored shop key made for the test.
ROUTES: dict[tuple[str, str], Needs] = {
    # ingest
    ("POST", "/v1/events"): Needs("write", body={"event": "view", "visitor_id": "v1"}),
    ("GET", "/v1/funnelstream.js"): Needs("none"),
    # funnel definitions: reading needs "read", every write "admin" ({funnel_id} is a
    # config funnel, so the right key's PUT/DELETE get 409 funnel_read_only)
    ("GET", "/v1/funnels"): Needs("read"),
    ("GET", "/v1/funnels/{funnel_id}"): Needs("read", "not_found"),
    ("GET", "/v1/funnels/{funnel_id}/versions"): Needs("read", "not_found"),
    ("POST", "/v1/funnels"): Needs("admin", body=FUNNEL),
    ("PUT", "/v1/funnels/{funnel_id}"): Needs(
        "admin", "not_found", body={k: v for k, v in FUNNEL.items() if k != "id"}
    ),
    ("DELETE", "/v1/funnels/{funnel_id}"): Needs("admin", "not_found"),
    # reports
    ("GET", "/v1/funnels/{funnel_id}/report"): Needs("read", "not_found", params=RANGE),
    ("POST", "/v1/funnels/report"): Needs("read", body={"funnel": FUNNEL, **RANGE}),
    ("GET", "/v1/funnels/{funnel_id}/trend"): Needs("read", "not_found", params=RANGE),
    # live; the stream is given a bad `since` so the right key gets a 400, not an
    # endless stream (its project check comes before, so another project's is a 404).
    ("GET", "/v1/funnels/{funnel_id}/live"): Needs("read", "not_found"),
    ("GET", "/v1/funnels/{funnel_id}/live/stream"): Needs(
        "read", "not_found", params={"since": "not-a-time"}
    ),
    # the stage board
    ("GET", "/v1/funnels/{funnel_id}/board"): Needs("read", "not_found"),
    ("GET", "/v1/funnels/{funnel_id}/board/export"): Needs("read", "not_found"),
    # analysis
    ("GET", "/v1/funnels/{funnel_id}/breakdown"): Needs(
        "read", "not_found", params={**RANGE, "property": "url"}
    ),
    ("GET", "/v1/funnels/{funnel_id}/dropped"): Needs(
        "read", "not_found", params={**RANGE, "step": "1"}
    ),
    ("GET", "/v1/funnels/{funnel_id}/dropped/next-events"): Needs(
        "read", "not_found", params={**RANGE, "step": "1"}
    ),
    ("GET", "/v1/funnels/{funnel_id}/time-to-convert"): Needs("read", "not_found", params=RANGE),
    ("GET", "/v1/funnels/{funnel_id}/open"): Needs("read", "not_found", params=RANGE),
    # decisions
    ("GET", "/v1/funnels/{funnel_id}/experiment"): Needs(
        "read", "not_found", params={**RANGE, "property": "variant", "control": "A"}
    ),
    ("GET", "/v1/funnels/{funnel_id}/forecast"): Needs(
        "read", "not_found", params={**RANGE, "target": "10"}
    ),
    ("GET", "/v1/funnels/{funnel_id}/drivers"): Needs(
        "read", "not_found", params={**RANGE, "step": "0"}
    ),
    ("GET", "/v1/retention"): Needs("read", params={**RANGE, "start_event": "buy"}),
    ("GET", "/v1/stats"): Needs("read"),
    # keys
    ("GET", "/v1/keys"): Needs("admin"),
    ("POST", "/v1/keys"): Needs("admin", body={"scope": "read", "label": "matrix"}),
    ("DELETE", "/v1/keys/{key_id}"): Needs("admin", "not_found"),
    # erasure: the right key's answer is 202 (or 503 when this app has no log to append to)
    ("DELETE", "/v1/visitors/{visitor_id}"): Needs("admin"),
    ("DELETE", "/v1/users/{user_id}"): Needs("admin"),
    # vendor SDK ingest (docs/sdk-ingestion.md): the write key, as a bearer here
    **{
        ("POST", path): Needs("write", body={"anonymousId": "a", "userId": "u", "event": "x"})
        for path in SEGMENT_PATHS
    },
    **{
        ("POST", path): Needs("write", body={"event": "x", "distinct_id": "d"})
        for path in POSTHOG_CAPTURE_PATHS
    },
    **{(m, path): Needs("none") for path in POSTHOG_FLAG_PATHS for m in ("GET", "POST")},
    # the analyst page: static files, no key (the user types a read key into the page)
    ("GET", "/app"): Needs("none"),
    ("GET", "/app/app.js"): Needs("none"),
    ("GET", "/app/app.css"): Needs("none"),
    ("GET", "/app/vendor/uplot.min.js"): Needs("none"),
    ("GET", "/app/vendor/uplot.min.css"): Needs("none"),
    # operations and documentation: no key
    ("GET", "/readyz"): Needs("none"),
    ("GET", "/healthz"): Needs("none"),
    ("GET", "/metrics"): Needs("none"),
    ("GET", "/openapi.json"): Needs("none"),
    ("GET", "/docs"): Needs("none"),
    ("GET", "/docs/oauth2-redirect"): Needs("none"),
    ("GET", "/redoc"): Needs("none"),
}


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, HEAD aside. Routers included into
    the app are walked through; a route of a kind not known here fails the test rather
    than being skipped."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "path") and hasattr(route, "methods"):
                # path_format: "{visitor_id:path}" as OpenAPI writes it, "{visitor_id}"
                path = getattr(route, "path_format", route.path)
                found.update((m, prefix + path) for m in route.methods if m != "HEAD")
            elif hasattr(route, "original_router"):  # an included router (FastAPI 0.16x)
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            else:
                raise AssertionError(f"cannot tell which paths {route!r} serves")

    walk(list(app.routes), "")
    return found


@pytest.fixture
def app(tmp_path: Path, ch: ClickHouse) -> FastAPI:
    (tmp_path / "c.toml").write_text(CONFIG)
    common: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "config_file": tmp_path / "c.toml",
        "clickhouse_dsn": ch.dsn,  # the session's engine: chdb opens one path per process
        "partitions": 1,
    }
    return build_app(IngestSettings(**common), ProcessorSettings(**common))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def test_every_route_is_classified(app: FastAPI) -> None:
    served = served_routes(app)
    documented = {
        (method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops
    }
    assert documented <= served  # the walk finds at least what OpenAPI lists
    assert sorted(served - ROUTES.keys()) == [], "routes missing from ROUTES: classify them"
    assert sorted(ROUTES.keys() - served) == [], "ROUTES lists routes the app no longer has"


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


# Routes answered by the same handler as another route of the table, which stands for them
# (the vendor SDK paths: one handler per protocol, the rest are aliases and slash variants).
SAME_HANDLER = {
    *(("POST", path) for path in list(SEGMENT_PATHS)[1:]),
    *(("POST", path) for path in POSTHOG_CAPTURE_PATHS[1:]),
    *((m, path) for path in POSTHOG_FLAG_PATHS[1:] for m in ("GET", "POST")),
}
CHECKED = [(route, needs) for route, needs in ROUTES.items() if route not in SAME_HANDLER]


@pytest.mark.parametrize(("route", "needs"), CHECKED, ids=lambda v: str(v))
def test_each_route_takes_only_its_scope_of_its_project(
    client: TestClient, route: tuple[str, str], needs: Needs
) -> None:
    method, template = route
    made = client.post("/v1/keys", json={"scope": "read"}, headers=bearer(KEYS["shop"]["admin"]))
    assert made.status_code == 201, made.text
    path = template.format(
        funnel_id="checkout", key_id=made.json()["key_id"], visitor_id="v1", user_id="u1"
    )

    def send(key: str | None) -> Any:
        return client.request(
            method, path, json=needs.body, params=needs.params, headers=bearer(key)
        )

    if needs.scope == "none":
        r = send(None)
        assert r.status_code < 400, (r.status_code, r.text)
        return

    r = send(None)
    assert r.status_code == 401, (r.status_code, r.text)
    for scope, key in KEYS["shop"].items():
        if scope == needs.scope:
            continue
        r = send(key)
        assert r.status_code == 403, (scope, r.status_code, r.text)
        body = r.json()
        assert body["error"] == "insufficient_scope", body
        assert needs.scope in str(body), body
    # Another project's key of the right scope, before the right key (which may revoke).
    r = send(KEYS["blog"][needs.scope])
    if needs.other_project == "not_found":
        assert r.status_code == 404, (r.status_code, r.text)
    else:
        assert r.status_code not in (401, 403) and r.status_code < 500, (r.status_code, r.text)
    r = send(KEYS["shop"][needs.scope])
    assert r.status_code not in (401, 403) and r.status_code < 500, (r.status_code, r.text)
    # Non-ASCII and non-UTF-8 keys, as raw header bytes: no match, never a 500.
    for raw in ("Bearer ak_\u00e9\u00e9".encode(), b"Bearer ak_\xff\xfe\x80"):
        r = client.request(
            method, path, json=needs.body, params=needs.params, headers={"Authorization": raw}
        )
        assert r.status_code == 401, (raw, r.status_code, r.text)
