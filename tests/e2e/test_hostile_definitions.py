"""No funnel definition can hurt the service: a real `funnelstream serve` process.

Each hostile definition is either refused with a 400 naming the field and a stable code,
or accepted and processed; after each, an ordinary event still reaches live state within
seconds and /healthz answers. A stored definition that no longer validates is
quarantined at start-up instead of stopping it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.server import ADMIN, READ, Server

pytestmark = pytest.mark.clickhouse

MAX_FUNNELS = 8  # the config's checkout + the accepted definitions below fit
JSON = {**READ, "Content-Type": "application/json"}
ADMIN_JSON = {**ADMIN, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(
        tmp_path_factory.mktemp("hostile") / "data",
        FUNNELSTREAM_MAX_FUNNELS_PER_PROJECT=str(MAX_FUNNELS),
    ).start()
    yield s
    s.stop()


def funnel_body(fid: str, op: str, value: str, prop: str = "v") -> bytes:
    """A definition as raw JSON text, so literals like NaN reach the server as sent."""
    return (
        f'{{"id": "{fid}", "steps": [{{"event": "hostile_start", "filters": '
        f'[{{"property": "{prop}", "op": "{op}", "value": {value}}}]}}, {{"event": "end"}}]}}'
    ).encode()


def save(server: Server, body: bytes, path: str = "/v1/funnels") -> httpx.Response:
    # Saving takes the admin key; the ad-hoc report (same validation) the read key.
    headers = JSON if path == "/v1/funnels/report" else ADMIN_JSON
    return httpx.post(f"{server.base}{path}", content=body, headers=headers, timeout=60)


def replace(server: Server, fid: str, body: bytes) -> httpx.Response:
    url = f"{server.base}/v1/funnels/{fid}"
    return httpx.put(url, content=body, headers=ADMIN_JSON, timeout=60)


def send(server: Server, event: str, visitor: str, **props: Any) -> None:
    now = int(time.time() * 1000)
    body = {"event": event, "visitor_id": visitor, "timestamp": now, "properties": props}
    assert server.post(body).status_code == 202


def reached(server: Server, funnel: str) -> int:
    return int(server.live(funnel)["stages"][0]["reached"])


def wait_reached(server: Server, funnel: str, count: int, timeout: float = 15) -> float:
    """Seconds until the funnel's first stage holds `count` visitors."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if reached(server, funnel) == count:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{funnel}: {reached(server, funnel)} reached, expected {count}")


class Probe:
    """An ordinary event through the config funnel, after every hostile one."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.count = reached(server, "checkout")

    def check(self) -> None:
        self.count += 1
        send(self.server, "page_view", f"probe-{self.count}")
        wait_reached(self.server, "checkout", self.count)
        assert httpx.get(f"{self.server.base}/healthz", timeout=5).status_code == 200


HUGE = "1" + "0" * 400
REFUSED = [
    # (body, status, code, field)
    (funnel_body("huge", "gt", HUGE), 400, "number_out_of_range", "steps[0].filters[0].value"),
    (funnel_body("beyond", "lt", str(2**53 + 1)), 400, "number_out_of_range", None),
    (funnel_body("float", "gt", "1e300"), 400, "number_out_of_range", None),
    (funnel_body("nan", "gt", "NaN"), 400, "number_out_of_range", "steps[0].filters[0].value"),
    (funnel_body("inf", "lt", "Infinity"), 400, "number_out_of_range", None),
    (funnel_body("ninf", "gt", "-Infinity"), 400, "number_out_of_range", None),
    (funnel_body("eqnan", "eq", "NaN"), 400, "number_out_of_range", None),
    (funnel_body("innan", "in", '["a", NaN]'), 400, "number_out_of_range", None),
    (funnel_body("backref", "regex", '"(a)\\\\1"'), 400, "regex_invalid", None),
    (funnel_body("look", "regex", '"(?=a)"'), 400, "regex_invalid", None),
    (funnel_body("longre", "regex", '"' + "a" * 5000 + '"'), 400, "regex_too_long", None),
    (
        # One over the per-list limit; a body over the query API's cap is refused before
        # parsing with 413 (tests/e2e/test_limits.py).
        funnel_body("biglist", "in", orjson.dumps(list(range(10_001))).decode()),
        400,
        "list_too_large",
        "steps[0].filters[0].value",
    ),
    (funnel_body("surrogate", "eq", '"\\ud800"'), 400, "text_invalid", None),
    (funnel_body("nested", "in", "[[[[1]]]]"), 400, "filter_value_invalid", None),
    # Too many digits for Python's int(): refused while parsing the body.
    (funnel_body("digits", "gt", "1" * 5000), 400, None, None),
]


@pytest.mark.parametrize(("body", "status", "code", "field"), REFUSED)
def test_hostile_definitions_are_refused_with_the_field(
    server: Server, body: bytes, status: int, code: str | None, field: str | None
) -> None:
    probe = Probe(server)
    r = save(server, body)
    assert r.status_code == status, r.text
    detail = r.json()
    if code is not None:
        assert detail["error"] == code, detail
        assert detail["field"] == (field or "steps[0].filters[0].value")
    # The same definition in an ad hoc report is refused the same way.
    adhoc = b'{"funnel": ' + body + b"}"
    assert save(server, adhoc, "/v1/funnels/report").status_code == status
    probe.check()


def test_hostile_but_valid_definitions_are_processed(server: Server) -> None:
    probe = Probe(server)
    accepted = {
        # Each reads its own property: every funnel sees every hostile_start event.
        "tiny": funnel_body("tiny", "gt", "5e-324", "tiny"),
        "edge": funnel_body("edge", "lt", str(-(2**53)), "edge"),
        "catastrophic": funnel_body("catastrophic", "regex", '"(a+)+$"', "text"),
        "list10k": funnel_body("list10k", "in", orjson.dumps(list(range(10_000))).decode(), "n"),
    }
    for fid, body in accepted.items():
        r = save(server, body)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == fid
        probe.check()
    listed = httpx.get(f"{server.base}/v1/funnels", headers=READ, timeout=30).json()
    assert {f["id"]: f["status"] for f in listed}.keys() >= accepted.keys()
    assert {f["status"] for f in listed} == {"active"}

    # A catastrophic pattern against the longest text a property can hold: RE2 is linear.
    start = time.monotonic()
    send(server, "hostile_start", "re-miss", text="a" * 30_000 + "!")
    send(server, "hostile_start", "re-hit", text="a" * 30_000)
    wait_reached(server, "catastrophic", 1)
    probe.check()
    assert time.monotonic() - start < 10

    send(server, "hostile_start", "tiny-hit", tiny=1e-300)
    send(server, "hostile_start", "tiny-miss", tiny=0)
    send(server, "hostile_start", "edge-hit", edge=-(2**53) - 2)  # stored as text, exact
    send(server, "hostile_start", "edge-miss", edge=-(2**53))
    send(server, "hostile_start", "list-hit", n=9_999)
    send(server, "hostile_start", "list-miss", n=10_000)
    for fid in ("tiny", "edge", "list10k"):
        wait_reached(server, fid, 1)
    probe.check()
    # The report (ClickHouse) agrees with the live state (processor) on every one.
    window = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    for fid in ("tiny", "edge", "list10k", "catastrophic"):
        assert server.report(fid, **window)["steps"][0]["visitors"] == 1, fid

    # A restart loads every one of them again and comes back ready, with the same state.
    server.stop()
    server.start()
    assert httpx.get(f"{server.base}/readyz", timeout=5).status_code == 200
    listed = httpx.get(f"{server.base}/v1/funnels", headers=READ, timeout=30).json()
    assert {f["id"] for f in listed if f["status"] == "active"} >= accepted.keys()
    for fid in ("tiny", "edge", "list10k", "catastrophic"):
        assert reached(server, fid) == 1, fid
    probe.check()


def test_funnels_per_project_are_limited(server: Server) -> None:
    listed = httpx.get(f"{server.base}/v1/funnels", headers=READ, timeout=30).json()
    for i in range(MAX_FUNNELS - len(listed)):
        assert save(server, funnel_body(f"fill{i}", "eq", '"x"')).status_code == 201
    r = save(server, funnel_body("one_more", "eq", '"x"'))
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "funnel_limit_reached"
    assert str(MAX_FUNNELS) in r.json()["message"]
    # Replacing an existing one (a new version) is always allowed.
    assert replace(server, "fill0", funnel_body("fill0", "eq", '"y"')).status_code == 200
    Probe(server).check()


def insert_stored_rows(data_dir: Path, rows: list[tuple[str, str, str]]) -> None:
    """Rows written straight into the server's funnel_versions table, as version 1 (it
    must be stopped: the embedded engine opens its data directory in one process only)."""
    script = (
        "import sys, time, orjson\n"
        "from funnelstream.clickhouse import ClickHouse\n"
        "ch = ClickHouse('chdb://' + sys.argv[1])\n"
        "from datetime import UTC, datetime\n"
        "now = datetime.now(UTC)\n"
        "stored = orjson.loads(sys.argv[2])\n"
        "rows = [(p, f, 1, d, now, None, time.time_ns()) for p, f, d in stored]\n"
        "ch.insert_sync('funnel_versions', rows, ('project_id', 'funnel_id', 'version', "
        "'definition', 'saved_at', 'archived_at', 'written_at'))\n"
        "ch.close()\n"
    )
    path = str((data_dir / "clickhouse").resolve())
    subprocess.run(
        [sys.executable, "-c", script, path, orjson.dumps(rows).decode()],
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_a_stored_definition_that_no_longer_loads_is_quarantined(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data).start()
    server.stop()

    # What an older release may have stored: a bound beyond Float64, a regex RE2 refuses,
    # text that is not a definition at all.
    def stored(fid: str, op: str, value: str) -> tuple[str, str, str]:
        definition = orjson.loads(funnel_body(fid, "eq", '"placeholder"'))
        text = orjson.dumps({**definition, "project": "shop"}).decode()
        return "shop", fid, text.replace('"placeholder"', value).replace('"eq"', f'"{op}"')

    insert_stored_rows(
        data,
        [
            stored("overflow", "gt", "1e400"),
            stored("backref", "regex", '"(a)\\\\1"'),
            ("shop", "junk", "{"),
        ],
    )
    server = Server(data).start()
    try:
        listed = httpx.get(f"{server.base}/v1/funnels", headers=READ, timeout=30).json()
        status = {f["id"]: (f["status"], f.get("code")) for f in listed}
        assert status == {
            "checkout": ("active", None),
            "backref": ("quarantined", "regex_invalid"),
            "junk": ("quarantined", "definition_invalid"),
            "overflow": ("quarantined", "number_out_of_range"),
        }
        assert all(f["reason"] for f in listed if f["status"] == "quarantined")
        metrics = httpx.get(f"{server.base}/metrics", timeout=30).text
        assert (
            'funnelstream_funnels_quarantined{code="number_out_of_range",funnel="overflow",'
            'project="shop"} 1.0' in metrics
        )
        assert "quarantined (regex_invalid)" in server.log_path.read_text()
        Probe(server).check()

        # A corrected definition under the same id replaces the quarantined one.
        assert replace(server, "overflow", funnel_body("overflow", "gt", "10")).status_code == 200
        listed = httpx.get(f"{server.base}/v1/funnels", headers=READ, timeout=30).json()
        assert ("overflow", "active") in {(f["id"], f["status"]) for f in listed}
        assert "overflow" not in {f["id"] for f in listed if f["status"] == "quarantined"}
    finally:
        server.stop()
