"""Cross-origin rules: any page may send events; only listed origins may query."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from funnelstream.app import build_app
from funnelstream.config import IngestSettings, ProcessorSettings

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_test"
read_key = "rk_test"
"""


def client(tmp_path: Path, origins: tuple[str, ...] = ()) -> TestClient:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    settings = IngestSettings(data_dir=tmp_path, config_file=config, query_cors_origins=origins)
    return TestClient(
        build_app(settings, ProcessorSettings(data_dir=tmp_path), frozenset({"ingest"}))
    )


def preflight(c: TestClient, path: str, origin: str, method: str = "GET") -> dict[str, str]:
    r = c.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method})
    return dict(r.headers)


def test_any_page_may_send_events_and_load_the_snippet(tmp_path: Path) -> None:
    with client(tmp_path) as c:
        for path in ("/v1/events", "/v1/funnelstream.js"):
            headers = preflight(c, path, "https://any-shop.example", "POST")
            assert headers["access-control-allow-origin"] == "*"


def test_the_query_api_refuses_unlisted_origins(tmp_path: Path) -> None:
    with client(tmp_path) as c:
        headers = preflight(c, "/v1/funnels", "https://evil.example", "POST")
        assert "access-control-allow-origin" not in headers
        # A simple cross-origin GET is answered without the header: the browser hides it.
        r = c.get("/readyz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_listed_origins_may_query_with_every_method(tmp_path: Path) -> None:
    with client(tmp_path, ("https://analysts.example",)) as c:
        for method in ("GET", "POST", "PUT", "DELETE"):
            headers = preflight(c, "/v1/funnels/checkout", "https://analysts.example", method)
            assert headers["access-control-allow-origin"] == "https://analysts.example"
        assert "access-control-allow-origin" not in preflight(c, "/v1/funnels", "https://x.example")
