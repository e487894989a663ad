"""The stage board over a real engine: events through the real log and processor, the
board read back with its filters, pages and CSV, an erasure through the log, and (with
hypothesis) the board's per-stage totals equal to the live counts over random histories."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor
from processor.rows import FUNNEL_STATE_COLUMNS
from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from query_api.routes.board import router as board_router
from query_api.routes.live import router as live_router
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.fixtures.clickhouse import truncate_all
from tests.processor.test_erase import erasure
from tests.processor.test_pipeline import T0, append, run_until_idle
from tests.processor.test_user_funnels import config

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
FUNNEL = {
    "id": "deals",
    "project": "p",
    "window_seconds": 10 * 365 * 86400,
    "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
}
EXAMPLES = int(os.environ.get("FUNNELSTREAM_BOARD_EXAMPLES", "20"))


BY_USER = {**FUNNEL, "id": "deals_by_user", "count_by": "user"}


def catalog() -> FunnelCatalog:
    return FunnelCatalog([FunnelDefinition.model_validate(f) for f in (FUNNEL, BY_USER)])


def make_app(ch: ClickHouse) -> FastAPI:
    app = FastAPI()
    install_error_envelope(app)
    app.state.clickhouse = ch
    app.state.catalog = catalog()
    app.state.project_config = ProjectConfig(
        projects=(Project("p", SecretStr("wk"), SecretStr("rk")),), funnels=()
    )
    app.include_router(live_router)
    app.include_router(board_router)
    return app


def ev(visitor: str, name: str, at_ms: int, n: int, **props: str) -> Event:
    e = Event("p", f"00000000-0000-4000-8000-{n:012d}", name, visitor, at_ms, at_ms)
    e.properties.update(props)
    return e


def minute(m: int) -> int:
    return T0 + m * 60_000


def history(now_ms: int) -> list[Event]:
    """a: cart (owner alice, then bob); b, d: view (alice); c: bought (carol, set last);
    e: view, no owner; gone: cart (alice), erased later; fresh: a view a minute ago."""
    steps = [
        ("a", "view", minute(0), {"owner": "alice"}),
        ("a", "cart", minute(5), {"owner": "bob"}),
        ("a", "scroll", minute(9), {}),
        ("b", "view", minute(1), {"owner": "alice"}),
        ("c", "view", minute(2), {}),
        ("c", "cart", minute(3), {}),
        ("c", "buy", minute(4), {"owner": "carol"}),
        ("d", "view", minute(10), {"owner": "alice", "channel": "ads"}),
        ("e", "view", minute(20), {"channel": "=cmd"}),
        ("gone", "view", minute(3), {"owner": "alice"}),
        ("gone", "cart", minute(6), {}),
        ("fresh", "view", now_ms - 60_000, {"owner": "alice"}),
    ]
    return [ev(v, name, at, n, **props) for n, (v, name, at, props) in enumerate(steps)]


async def board(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/funnels/deals/board", params=params, headers=READ)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def who(body: dict[str, Any]) -> list[tuple[str, int]]:
    return [(v["visitor_id"], v["stage"]) for v in body["visitors"]]


async def test_board_lists_each_stage_with_properties_filters_pages_and_csv(
    ch: ClickHouse, tmp_path: Path
) -> None:
    now_ms = int(time.time() * 1000)
    events = history(now_ms)
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    await run_until_idle(Processor(log, ch, catalog(), config()), log, len(events))
    transport = httpx.ASGITransport(app=make_app(ch))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        everyone = await board(client, property=["owner", "channel"])
        # Stage, then entry time (oldest first), then id.
        assert who(everyone) == [
            ("b", 0),
            ("d", 0),
            ("e", 0),
            ("fresh", 0),
            ("a", 1),
            ("gone", 1),
            ("c", 2),
        ]
        rows = {v["visitor_id"]: v for v in everyone["visitors"]}
        assert rows["a"]["entered_at"].startswith("2025-10-09T08:58:20")  # minute 5
        assert rows["a"]["last_activity_at"].startswith("2025-10-09T09:02:20")  # minute 9
        assert rows["a"]["properties"] == {"owner": "bob", "channel": ""}
        assert rows["d"]["properties"] == {"owner": "alice", "channel": "ads"}
        assert [s["visitors"] for s in everyone["stages"]] == [4, 2, 1]
        live = await client.get("/v1/funnels/deals/live?minutes=0", headers=READ)
        assert [s["at_stage"] for s in live.json()["stages"]] == [4, 2, 1]

        # Filters: one stage, stalled for an hour (not `fresh`), an owner.
        stalled = await board(client, stage=0, stalled_for=3600)
        assert who(stalled) == [("b", 0), ("d", 0), ("e", 0)]
        assert [s["visitors"] for s in stalled["stages"]] == [3, 0, 0]
        alice = await board(client, where="owner=alice")
        assert who(alice) == [("b", 0), ("d", 0), ("fresh", 0), ("gone", 1)]
        assert [s["visitors"] for s in alice["stages"]] == [3, 1, 0]
        assert alice["visitors"][0]["properties"] == {"owner": "alice"}

        # Pages of two, with and without a property filter, add up to the whole board.
        for params in ({}, {"where": "owner=alice"}):
            seen: list[tuple[str, int]] = []
            cursor = None
            for _ in range(20):  # bounded: a cursor that does not advance fails, not hangs
                page = await board(
                    client, limit=2, **params, **({"cursor": cursor} if cursor else {})
                )
                seen += who(page)
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            else:
                raise AssertionError("the pages never ended")
            full = await board(client, **params)
            assert seen == who(full) and len(seen) == len(set(seen))

        export = await client.get(
            "/v1/funnels/deals/board/export", params={"property": "channel"}, headers=READ
        )
        assert export.status_code == 200
        assert export.headers["content-type"].startswith("text/csv")
        table = list(csv.reader(io.StringIO(export.text)))
        assert table[0] == [
            "visitor_id",
            "stage",
            "event",
            "entered_at",
            "last_activity_at",
            "channel",
        ]
        assert [(r[0], int(r[1])) for r in table[1:]] == who(everyone)
        # A value a spreadsheet would run as a formula is quoted.
        assert next(r for r in table if r[0] == "e")[5] == "'=cmd"

        for bad in ({"where": "owner"}, {"property": "a b"}, {"cursor": "nope"}, {"stage": 3}):
            r = await client.get("/v1/funnels/deals/board", params=bad, headers=READ)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["field"] == next(iter(bad))

        # An erased visitor leaves the board (its state and events are deleted).
        await append(log, [erasure("gone")])
        await run_until_idle(Processor(log, ch, catalog(), config()), log, 1)
        after = await board(client, property="owner")
        assert "gone" not in {v for v, _ in who(after)}
        assert [s["visitors"] for s in after["stages"]] == [4, 1, 1]
    await log.close()


async def test_a_funnel_counting_users_lists_users_with_their_visitors_properties(
    ch: ClickHouse, tmp_path: Path
) -> None:
    """Rows of a `count_by: "user"` funnel are users: their properties and last activity
    come from the events of every visitor that sent the user id."""
    events = [
        ev("a1", "view", minute(0), 0, owner="amy"),
        ev("a2", "cart", minute(2), 1, owner="zed"),
        ev("b1", "view", minute(1), 2),
        ev("anon", "view", minute(3), 3, owner="nobody"),
    ]
    events = [
        dataclasses.replace(e, user_id=user)
        for e, user in zip(events, ["u1", "u1", "u2", ""], strict=True)
    ]
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    await run_until_idle(Processor(log, ch, catalog(), config()), log, len(events))
    await log.close()
    transport = httpx.ASGITransport(app=make_app(ch))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get(
            "/v1/funnels/deals_by_user/board", params={"property": "owner"}, headers=READ
        )
        assert r.status_code == 200, r.text
        body = r.json()
        live = await client.get("/v1/funnels/deals_by_user/live?minutes=0", headers=READ)
    rows = {v["visitor_id"]: v for v in body["visitors"]}
    assert rows["u1"]["stage"] == 1 and rows["u1"]["properties"] == {"owner": "zed"}
    assert rows["u1"]["last_activity_at"].startswith("2025-10-09T08:55:20")  # minute 2
    assert rows["u2"]["stage"] == 0 and rows["u2"]["properties"] == {"owner": ""}
    # Never identified: counted on its own, under its visitor id.
    assert rows["anon"]["stage"] == 0 and rows["anon"]["properties"] == {"owner": "nobody"}
    assert [s["visitors"] for s in body["stages"]] == [s["at_stage"] for s in live.json()["stages"]]


# --- the board's totals equal the live counts, over random histories ----------------

VISITORS = ["v0", "v1", "v2", "v3", "v4"]
NAMES = ["view", "cart", "buy", "other"]


@pytest.fixture(scope="module")
def module_client(clickhouse_engine: ClickHouse) -> Iterator[tuple[TestClient, ClickHouse]]:
    with TestClient(make_app(clickhouse_engine)) as c:
        yield c, clickhouse_engine


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(VISITORS), st.sampled_from(NAMES), st.integers(0, 5_000)),
        max_size=30,
    ),
    limit=st.integers(1, 4),
)
def test_board_totals_equal_live_counts(
    module_client: tuple[TestClient, ClickHouse], steps: list[tuple[str, str, int]], limit: int
) -> None:
    """Every state row the processor would write for the history (each visitor's older
    versions included, as before a merge): the board's totals are the live route's
    `at_stage`, and its pages hold each visitor at level > 0 once."""
    client, ch = module_client
    truncate_all(ch)
    funnel = FunnelDefinition.model_validate(FUNNEL)
    timing = Timing(session_gap_ms=30 * 60 * 1000, lateness_ms=10_000)
    states: dict[str, VisitorState] = {}
    for offset, (visitor, name, at) in enumerate(sorted(steps, key=lambda s: s[2])):
        state = states.setdefault(visitor, VisitorState("p", visitor))
        out = Outputs()
        apply_event(
            state,
            ev(visitor, name, T0 + at * 1000, offset),
            partition=0,
            offset=offset,
            funnels=[funnel],
            timing=timing,
            processed_at_ms=T0 + offset,
            out=out,
        )
        # One insert per event, as batches land: parts that only FINAL reads as one row.
        ch.insert_sync("funnel_state", list(out.funnel_states.values()), FUNNEL_STATE_COLUMNS)

    live = client.get("/v1/funnels/deals/live?minutes=0", headers=READ).json()
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(len(VISITORS) + 1):  # bounded: a cursor that does not advance fails
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/funnels/deals/board", params=params, headers=READ).json()
        assert [s["visitors"] for s in page["stages"]] == [s["at_stage"] for s in live["stages"]]
        seen += [v["visitor_id"] for v in page["visitors"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    else:
        raise AssertionError("the pages never ended")
    held = {v for v, s in states.items() if s.funnels.get("deals") and s.funnels["deals"].level}
    assert sorted(seen) == sorted(held)
