"""Live stages, recent transitions and the server-sent-events stream, over a real engine.

State rows are written as the processor writes them (several versions per visitor, as
before a background merge), so the reads must deduplicate (FINAL).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from processor.catalog import FunnelCatalog
from processor.rows import FUNNEL_STATE_COLUMNS, TRANSITION_COLUMNS
from query_api.routes.funnels import router as funnels_router
from query_api.routes.live import STREAM_BATCH, StreamCounter, sse_message
from query_api.routes.live import router as live_router
from schemas.funnels import FunnelDefinition

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
CHECKOUT = FunnelDefinition.model_validate(
    {
        "id": "checkout",
        "project": "shop",
        "window_seconds": 3600,
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
    }
)
ATTEMPTS = CHECKOUT.model_copy(update={"id": "attempts", "counting": "total"})
SESSIONS = CHECKOUT.model_copy(update={"id": "sessions", "count_by": "session"})


def make_app(ch: ClickHouse) -> FastAPI:
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog([CHECKOUT, ATTEMPTS, SESSIONS])
    app.state.project_config = ProjectConfig(
        projects=(Project("shop", SecretStr("wk"), SecretStr("rk")),), funnels=()
    )
    app.include_router(funnels_router)
    app.include_router(live_router)
    return app


@pytest.fixture
def client(ch: ClickHouse) -> Iterator[TestClient]:
    with TestClient(make_app(ch)) as c:
        yield c


def state(
    ch: ClickHouse,
    rows: list[tuple[str, int, int]],
    funnel: str = "checkout",
    attempts: list[int] | None = None,
) -> None:
    """(visitor, level, version)."""
    now = datetime.now(UTC)
    out = [
        ("shop", funnel, v, level, [now] * 3, [now] * 3, attempts or [], now, version)
        for v, level, version in rows
    ]
    ch.insert_sync("funnel_state", out, FUNNEL_STATE_COLUMNS)


def transition(
    ch: ClickHouse,
    visitor: str,
    step: int,
    reached: datetime,
    written: datetime,
    kind: str = "reached",
) -> None:
    row = ("shop", "checkout", visitor, step, reached, reached, uuid.uuid4(), written, kind)
    ch.insert_sync("funnel_transitions", [row], TRANSITION_COLUMNS)


def test_stages_read_the_latest_state_and_recent_transitions(
    client: TestClient, ch: ClickHouse
) -> None:
    state(ch, [("v1", 1, 1), ("v2", 1, 1), ("v3", 3, 1)])
    state(ch, [("v1", 2, 2)])  # v1 moved on: only its newest row counts
    now = datetime.now(UTC)
    transition(ch, "v1", 2, now - timedelta(minutes=5), now)
    transition(ch, "v1", 2, now - timedelta(minutes=5), now)  # a replay writes it again
    transition(ch, "v3", 3, now - timedelta(minutes=50), now)
    # v2's step 2 was retracted by a late event's re-fold: not counted.
    transition(ch, "v2", 2, now - timedelta(minutes=7), now)
    transition(ch, "v2", 2, now - timedelta(minutes=7), now, "retracted")
    r = client.get("/v1/funnels/checkout/live", params={"minutes": 30}, headers=READ)
    assert r.status_code == 200, r.text
    stages = r.json()["stages"]
    assert [(s["at_stage"], s["reached"], s["transitions"]) for s in stages] == [
        (1, 3, 0),
        (1, 2, 1),
        (1, 1, 0),
    ]
    hour = client.get("/v1/funnels/checkout/live", params={"minutes": 60}, headers=READ)
    assert [s["transitions"] for s in hour.json()["stages"]] == [0, 1, 1]
    assert client.get("/v1/funnels/nope/live", headers=READ).status_code == 404
    bad = client.get("/v1/funnels/checkout/live", params={"minutes": -1}, headers=READ)
    # One validation answer: 400 with the field, never FastAPI's 422.
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_request" and bad.json()["field"] == "minutes"


def test_total_counting_reports_attempts_per_stage(client: TestClient, ch: ClickHouse) -> None:
    state(ch, [("v1", 3, 1)], "attempts", [3, 2, 1])
    state(ch, [("v1", 3, 2)], "attempts", [4, 2, 1])  # a newer attempt: only this row counts
    state(ch, [("v2", 1, 1)], "attempts", [2, 0, 0])
    r = client.get("/v1/funnels/attempts/live", params={"minutes": 0}, headers=READ)
    assert r.status_code == 200, r.text
    stages = r.json()["stages"]
    assert [(s["at_stage"], s["reached"]) for s in stages] == [(4, 6), (1, 2), (1, 1)]


def test_session_counting_reports_sessions_per_stage(client: TestClient, ch: ClickHouse) -> None:
    # v1: an earlier session reached step 3, the open one is at step 1 (level 1).
    state(ch, [("v1", 1, 1)], "sessions", [2, 1, 1])
    # v2: a closed session at step 2, and a new one with no step yet (level 0).
    state(ch, [("v2", 0, 1)], "sessions", [1, 1, 0])
    r = client.get("/v1/funnels/sessions/live", params={"minutes": 0}, headers=READ)
    assert r.status_code == 200, r.text
    stages = r.json()["stages"]
    assert [(s["at_stage"], s["reached"]) for s in stages] == [(1, 3), (1, 2), (1, 1)]


def test_sse_message_format() -> None:
    assert sse_message({"a": 1}, "transition", "7") == 'id: 7\nevent: transition\ndata: {"a":1}\n\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(ch: ClickHouse) -> Iterator[str]:
    """The app on a real HTTP server, so a client really disconnects."""
    port = _free_port()
    config = uvicorn.Config(make_app(ch), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            parsed: dict[str, Any] = orjson.loads(line[6:])
            yield parsed


def second_reached(data: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(data["reached_at"])


def test_stream_sends_new_transitions_and_ends_when_the_client_leaves(
    server: str, ch: ClickHouse
) -> None:
    now = datetime.now(UTC)
    transition(ch, "v1", 1, now - timedelta(seconds=3), now - timedelta(hours=1))  # before
    transition(ch, "v2", 1, now - timedelta(seconds=2), now)
    url = f"{server}/v1/funnels/checkout/live/stream"
    since = str(int((now - timedelta(minutes=1)).timestamp() * 1000))
    with httpx.stream("GET", url, params={"since": since}, headers=READ, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.iter_lines())
        first = next(events)
        assert (first["visitor_id"], first["index"], first["event"]) == ("v2", 0, "view")
        transition(ch, "v2", 2, datetime.now(UTC), datetime.now(UTC))
        second = next(events)  # the next poll (1 s) picks it up; v2's step 1 is not resent
        assert (second["visitor_id"], second["index"], second["event"]) == ("v2", 1, "cart")
        # A late event's re-fold moves v2's step 2 earlier: one correction event.
        fixed_at = datetime.now(UTC)
        earlier = (fixed_at - timedelta(minutes=3)).replace(microsecond=0)
        transition(ch, "v2", 2, second_reached(second), fixed_at, "retracted")
        transition(ch, "v2", 2, earlier, fixed_at, "corrected")
        third = next(events)
        assert third["visitor_id"] == "v2"
        assert [(t["index"], t["event"]) for t in third["retracted"]] == [(1, "cart")]
        assert [t["reached_at"] for t in third["corrected"]] == [earlier.isoformat()]
        assert StreamCounter.open == 1
    deadline = time.monotonic() + 5
    while StreamCounter.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert StreamCounter.open == 0


def test_stream_sends_more_transitions_than_a_page_written_at_once(
    server: str, ch: ClickHouse
) -> None:
    """A batch of more than STREAM_BATCH transitions sharing one write time (a processor
    catching up) reaches the client whole, and the stream goes on after it."""
    now = datetime.now(UTC)
    many = STREAM_BATCH + 200
    rows = [
        ("shop", "checkout", f"w{n:05d}", 1, now, now, uuid.uuid4(), now, "reached")
        for n in range(many)
    ]
    ch.insert_sync("funnel_transitions", rows, TRANSITION_COLUMNS)
    url = f"{server}/v1/funnels/checkout/live/stream"
    since = str(int((now - timedelta(minutes=1)).timestamp() * 1000))
    with httpx.stream("GET", url, params={"since": since}, headers=READ, timeout=10) as r:
        events = _events(r.iter_lines())
        got = {next(events)["visitor_id"] for _ in range(many)}
        assert len(got) == many
        transition(ch, "after", 1, datetime.now(UTC), datetime.now(UTC))
        assert next(events)["visitor_id"] == "after"
