"""A funnel's versions through the real processor, log, engine and query API, sharing one
catalog as `funnelstream serve` does.

After a replacement (PUT), the backfill rebuilds the live state with the new version, and
the live stage counts equal the new version's report over the same stored events, while
events keep arriving. Archiving stops the processor advancing the funnel and takes it off
the live routes; saving it again, even with the same definition, is a new version whose
state is rebuilt, so the events stored while it was archived count.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import Project, ProjectConfig
from funnelstream.http_errors import install_error_envelope
from funnelstream.log.embedded import EmbeddedLog
from processor.backfill import state_key
from processor.backfills import MARKER_SUFFIX
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor
from query_api.routes.funnels import router as funnels_router
from query_api.routes.live import router as live_router
from query_api.routes.reports import router as reports_router
from schemas.events import Event
from tests.processor.test_backfill_chunks import PARTITIONS, config, payloads, wait_for
from tests.processor.test_pipeline import T0, append
from tests.processor.test_user_funnels import user_traffic

pytestmark = pytest.mark.clickhouse

READ = {"Authorization": "Bearer rk"}
ADMIN = {"Authorization": "Bearer ak"}
ALL_TIME = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
VIEW_CART = {"id": "flow", "steps": [{"event": "view"}, {"event": "cart"}]}
# user_traffic spans a few hours from T0; later traffic starts after it.
T_LATER = T0 + 6 * 3_600_000
T_ARCHIVED = T0 + 12 * 3_600_000
VIEW_CART_BUY = {"steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}]}


class Running:
    """The processor in the background and the query API in front of the same catalog."""

    def __init__(self, ch: ClickHouse, log: EmbeddedLog) -> None:
        self.ch = ch
        self.log = log
        self.catalog = FunnelCatalog()
        self.processor = Processor(log, ch, self.catalog, config(5))
        app = FastAPI()
        install_error_envelope(app)
        app.state.clickhouse = ch
        app.state.catalog = self.catalog
        app.state.project_config = ProjectConfig(
            projects=(Project("p", SecretStr("wk"), SecretStr("rk"), SecretStr("ak")),),
            funnels=(),
        )
        for router in (funnels_router, reports_router, live_router):
            app.include_router(router)
        self.api = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")
        self.sent = 0

    async def send(self, events: list[Event]) -> None:
        await append(self.log, payloads(events))
        self.sent += len(events)
        await wait_for(lambda: self.processor.processed_messages >= self.sent, "the events")

    async def rebuilt(self, version: int) -> None:
        """Wait for every partition's backfill marker of the funnel's current version."""
        funnel = self.catalog.get("p", "flow")
        assert funnel is not None and self.catalog.version_of("p", "flow") == version
        key = state_key(funnel, version) + MARKER_SUFFIX

        def done() -> bool:
            ((n,),) = self.ch.query_rows_sync(
                "SELECT count() FROM funnel_backfills FINAL"
                " WHERE funnel_id = 'flow' AND definition_hash = {k:String}",
                {"k": key},
            )
            return int(n) == PARTITIONS

        await wait_for(done, f"the backfill of version {version}")

    async def report(self, **params: str) -> list[int]:
        r = await self.api.get(
            "/v1/funnels/flow/report", params={**ALL_TIME, **params}, headers=READ
        )
        assert r.status_code == 200, r.text
        return [int(s["visitors"]) for s in r.json()["steps"]]

    async def live(self) -> list[int]:
        r = await self.api.get("/v1/funnels/flow/live", params={"minutes": 0}, headers=READ)
        assert r.status_code == 200, r.text
        return [int(s["reached"]) for s in r.json()["stages"]]

    async def write(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        r = await self.api.request(method, path, json=body, headers=ADMIN)
        assert r.status_code in (200, 201), r.text
        answer: dict[str, Any] = r.json()
        return answer


@pytest.fixture
async def running(ch: ClickHouse, tmp_path: Path) -> AsyncIterator[Running]:
    log = EmbeddedLog(tmp_path / "log", default_partitions=PARTITIONS)
    run = Running(ch, log)
    stop = asyncio.Event()
    task = asyncio.create_task(run.processor.run(stop))
    yield run
    stop.set()
    await task
    await run.api.aclose()
    await log.close()


def funnel_state_rows(ch: ClickHouse) -> list[tuple[Any, ...]]:
    return ch.query_rows_sync(
        "SELECT visitor_id, level, step_reached_at FROM funnel_state FINAL"
        " WHERE funnel_id = 'flow' ORDER BY ALL"
    )


async def test_a_replaced_funnel_is_rebuilt_and_an_archived_one_stops(running: Running) -> None:
    history = user_traffic(visitors=120, users=20, seed=51)
    await running.send(history)

    assert (await running.write("POST", "/v1/funnels", VIEW_CART))["version"] == 1
    await running.rebuilt(1)
    first = await running.live()
    assert first == await running.report() and first[1] > 0

    assert (await running.write("PUT", "/v1/funnels/flow", VIEW_CART_BUY))["version"] == 2
    # Events keep arriving while the new version's state is rebuilt.
    await running.send(user_traffic(visitors=60, users=20, seed=52, start_ms=T_LATER))
    await running.rebuilt(2)
    replaced = await running.live()
    assert len(replaced) == 3 and replaced[2] > 0
    assert replaced == await running.report()
    assert (await running.report(version="1"))[:2] == replaced[:2]  # same first steps

    archived = await running.write("DELETE", "/v1/funnels/flow")
    assert archived["status"] == "archived"
    gone = await running.api.get("/v1/funnels/flow/live", headers=READ)
    assert gone.status_code == 404 and gone.json()["error"] == "funnel_archived"
    frozen = funnel_state_rows(running.ch)
    await running.send(user_traffic(visitors=60, users=20, seed=53, start_ms=T_ARCHIVED))
    assert funnel_state_rows(running.ch) == frozen  # not advanced while archived
    counted = await running.report()  # its history stays queryable, new events too
    assert counted[0] > replaced[0]

    # The same definition again: version 3, rebuilt with the events stored meanwhile.
    assert (await running.write("POST", "/v1/funnels", {**VIEW_CART_BUY, "id": "flow"}))[
        "version"
    ] == 3
    await running.rebuilt(3)
    assert await running.live() == counted == await running.report(version="2")
