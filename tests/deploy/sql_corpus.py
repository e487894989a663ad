"""Every SQL statement Funnelstream ships or sends, gathered for the version check
(tests/deploy/test_clickhouse_version.py) and the cluster rendering test.

Three sources, together the whole of it:
* the migrations, as files (`schemas/clickhouse/`) and as rendered for a cluster
  (funnelstream/cluster_schema.py);
* the report builders (funnel/sql, query_api/sql) over definitions that use every step,
  filter and option kind;
* a run of the whole app on the embedded engine (ingest → log → processor, backfills, late
  events, erasures, every query route, keys, funnel versions), with every statement the
  ClickHouse client is asked to run kept as it went by (the processor's and the stores'
  inline SQL is only ever composed at run time).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from funnel.compiled import CompiledFunnel, compile_funnel
from funnel.sql.report import levels_sql, report_sql, trend_sql
from funnelstream.app import build_app
from funnelstream.clickhouse import ClickHouse, migration_files, split_statements
from funnelstream.cluster_schema import render_all
from funnelstream.config import IngestSettings, ProcessorSettings
from funnelstream.retention import EXPIRING, ttl_expression
from query_api.sql.analysis import (
    Breakdown,
    breakdown_sql,
    dropped_sql,
    histogram_sql,
    next_events_sql,
    open_funnel_sql,
)
from query_api.sql.live import (
    attempt_counts_sql,
    recent_transitions_sql,
    stage_counts_sql,
    transitions_after_sql,
)
from schemas.funnels import FunnelDefinition
from tests.query_api.sql.test_snapshots import CASES as SNAPSHOT_CASES

Statement = tuple[str, dict[str, Any]]

START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2025, 2, 1, tzinfo=UTC)

# Every filter op, alternatives, per-step windows, optional steps, exclusions with filters.
_EVERY_FILTER = [
    {"property": "plan", "op": "eq", "value": "pro"},
    {"property": "plan", "op": "neq", "value": "free"},
    {"property": "sku", "op": "in", "value": ["a", 1, True, None]},
    {"property": "sku", "op": "not_in", "value": ["b"]},
    {"property": "url", "op": "contains", "value": "/cart"},
    {"property": "url", "op": "regex", "value": "^/p/[0-9]+$"},
    {"property": "price", "op": "gt", "value": 10},
    {"property": "price", "op": "lt", "value": 1000},
    {"property": "coupon", "op": "is_set"},
    {"property": "ref", "op": "is_not_set"},
]
_STEPS: list[dict[str, Any]] = [
    {"any_of": [{"event": "page_view"}, {"event": "landing", "filters": _EVERY_FILTER[:2]}]},
    {"event": "add_to_cart", "filters": _EVERY_FILTER, "within_seconds": 600},
    {"event": "checkout", "optional": True},
    {"event": "purchase"},
]
_PLAIN: list[dict[str, Any]] = [
    {"event": "page_view"},
    {"event": "add_to_cart"},
    {"event": "purchase"},
]
# Bodies the API accepts (validated as it validates them), together every option kind.
DEFINITIONS: dict[str, dict[str, Any]] = {
    "every_step_kind": {
        "steps": _STEPS,
        "exclusions": [
            {"event": "support", "filters": _EVERY_FILTER[2:4], "from_step": 1, "to_step": 3}
        ],
    },
    "by_user": {"steps": _STEPS, "count_by": "user"},
    "by_session": {"steps": _STEPS, "count_by": "session"},
    "strict": {"steps": _PLAIN, "order": "strict", "exclusions": [{"event": "support"}]},
    "any_order": {"steps": _PLAIN, "order": "any"},
    "total": {"steps": [_PLAIN[0], {**_PLAIN[1], "within_seconds": 60}], "counting": "total"},
    "held": {"steps": _PLAIN, "hold_property": "sku"},
    "repeated_event": {"steps": [_PLAIN[0], _PLAIN[0], _PLAIN[2]]},
}


def definition(name: str, project: str = "shop") -> FunnelDefinition:
    body = {"id": name, "project": project, "window_seconds": 86400, **DEFINITIONS[name]}
    return FunnelDefinition.model_validate(body)


def migration_statements() -> list[Statement]:
    """As one server runs them, and as rendered for a cluster."""
    single = [s for _, _, sql in migration_files() for s in split_statements(sql)]
    return [(s, {}) for s in [*single, *render_all("funnelstream")]]


def retention_statements() -> list[Statement]:
    """The TTLs retention sets (funnelstream/retention.py), for a mix of retentions; run
    by the app only when a retention is configured, which would age the shared engine's
    tables, so they are built here and parsed, not run."""
    days = {"shop": 30, "other": 0, "brief": 7}
    out = []
    for table in EXPIRING:
        expression = ttl_expression(table, days)
        if expression is not None:
            out.append((f"ALTER TABLE {table.table} MODIFY TTL {expression}", {}))
    # What apply_retention sends besides (a retention removed; the marker comment).
    out.append(("ALTER TABLE events REMOVE TTL", {}))
    out.append(("ALTER TABLE events MODIFY COMMENT 'funnelstream retention 0'", {}))
    return out


def builder_statements() -> list[Statement]:
    """Each report and live builder over each representative definition."""
    out: list[Statement] = []
    for name in DEFINITIONS:
        funnel: CompiledFunnel = compile_funnel(definition(name))
        builders: list[Callable[[], Statement]] = [
            lambda f=funnel: report_sql(f, "shop", START, END, END),
            lambda f=funnel: trend_sql(f, "shop", START, END, "hour"),
            lambda f=funnel: trend_sql(f, "shop", START, END, "day"),
            lambda f=funnel: trend_sql(f, "shop", START, END, "week"),
            lambda f=funnel: breakdown_sql(
                f, "shop", START, END, Breakdown("plan", "event", "first_touch")
            ),
            lambda f=funnel: breakdown_sql(
                f, "shop", START, END, Breakdown("utm_source", "session", "last_touch")
            ),
            lambda f=funnel: breakdown_sql(
                f, "shop", START, END, Breakdown("plan", "event", "step", 1, 5)
            ),
            lambda f=funnel: dropped_sql(f, "shop", START, END, END, 0, 100, "v1"),
            lambda f=funnel: next_events_sql(f, "shop", START, END, END, 0, 10),
            lambda f=funnel: histogram_sql(f, "shop", START, END, 1, 20),
            lambda f=funnel: open_funnel_sql(f, "shop", START, END),
        ]
        if name == "every_step_kind":
            builders.append(lambda f=funnel: levels_sql(f, "shop", START, END))
        out.extend(build() for build in builders)
    out += [
        stage_counts_sql("shop", "f"),
        attempt_counts_sql("shop", "f"),
        recent_transitions_sql("shop", "f", START),
        transitions_after_sql("shop", "f", START, 100),
    ]
    # The snapshot cases besides: the builders above do not cover the segment, time
    # zone, retention, drivers, experiment and board ones.
    out += [case() for case in SNAPSHOT_CASES.values()]
    return out


@dataclass
class Recorder:
    """The statements the ClickHouse client was asked to run, each with its parameters."""

    seen: dict[str, dict[str, Any]] = field(default_factory=dict)

    def statements(self) -> list[Statement]:
        return list(self.seen.items())


@contextlib.contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """Keep every statement `ClickHouse` runs (the engine still runs it). Row inserts
    carry no SQL of ours (the client sends the table and columns), so they are left out."""
    recorder = Recorder()
    run = ClickHouse._call

    def keep(self: ClickHouse, kind: str, sql: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if kind != "insert":
            recorder.seen.setdefault(sql, dict(kwargs.get("parameters") or {}))
        return run(self, kind, sql, fn, *args, **kwargs)

    monkeypatch.setattr(ClickHouse, "_call", keep)
    yield recorder


CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_shop"
read_key = "rk_shop"
admin_key = "ak_shop"
"""
READ = {"Authorization": "Bearer rk_shop"}
WRITE = {"Authorization": "Bearer wk_shop"}
ADMIN = {"Authorization": "Bearer ak_shop"}


def _wait(what: str, done: Callable[[], bool]) -> None:
    for _ in range(600):
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _storefront(now_ms: int, visitors: int, age_ms: int) -> list[dict[str, Any]]:
    out = []
    for v in range(visitors):
        props = {"plan": "pro", "sku": "a", "url": "/cart", "price": 20, "coupon": "x"}
        for k, name in enumerate(["page_view", "add_to_cart", "checkout", "purchase"][: 1 + v % 4]):
            out.append(
                {
                    "event": name,
                    "visitor_id": f"v{v}",
                    "user_id": f"u{v % 3}" if v % 2 else None,
                    "timestamp": now_ms - age_ms + k * 1000,
                    "properties": props,
                }
            )
    return [{k: v for k, v in e.items() if v is not None} for e in out]


def app_statements(
    tmp_path: Path, ch: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> list[Statement]:
    """Run the whole app once on the shared engine through every path that reaches
    ClickHouse; return what it sent."""
    (tmp_path / "c.toml").write_text(CONFIG)
    common: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "config_file": tmp_path / "c.toml",
        "clickhouse_dsn": ch.dsn,  # the session's engine: one data path per process
        "partitions": 2,
        "key_secret": "a-test-secret-of-thirty-two-chars!!",
    }
    with recording(monkeypatch) as recorder:
        app = build_app(
            IngestSettings(**common),
            ProcessorSettings(**common, batch_max_seconds=0.05),
        )
        with TestClient(app) as client:
            _drive(client, ch)
    return recorder.statements()


def _drive(client: TestClient, ch: ClickHouse) -> None:
    now = int(time.time() * 1000)

    def processed() -> bool:
        return client.get("/healthz").json().get("lag") == 0

    def post(events: list[dict[str, Any]]) -> None:
        r = client.post("/v1/events", json={"batch": events}, headers=WRITE)
        assert r.status_code == 202, r.text

    post(_storefront(now, 24, 3600_000))
    _wait("the first events processed", processed)
    # Funnels saved after their events: each is backfilled.
    for name, body in DEFINITIONS.items():
        r = client.post(
            "/v1/funnels", json={"id": name, "window_seconds": 86400, **body}, headers=ADMIN
        )
        assert r.status_code == 201, r.text

    def backfilled() -> bool:
        rows = ch.query_rows_sync("SELECT uniqExact(funnel_id) FROM funnel_backfills FINAL")
        return int(rows[0][0]) >= len(DEFINITIONS)

    _wait("the backfills", backfilled)
    # In order, then days late (each late one re-folds its visitor), then a replay
    # (deduped against the stored events).
    live = _storefront(now, 6, 0)
    post(live)
    post(_storefront(now, 6, 3 * 86400_000))
    post(live)
    _wait("the late events processed", processed)

    span = {"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    # Every definition's SQL comes from the builders above; the routes are walked for
    # their own statements (lookups, versions, live reads) with two kinds of funnel.
    for name in ("every_step_kind", "by_user"):
        base = f"/v1/funnels/{name}"
        for path, params in [
            ("/report", span),
            ("/trend", {**span, "interval": "day"}),
            ("/live", {}),
            ("/breakdown", {**span, "property": "plan"}),
            ("/breakdown", {**span, "property": "utm_source", "source": "session"}),
            ("/dropped", {**span, "step": 0}),
            ("/dropped/next-events", {**span, "step": 0}),
            ("/time-to-convert", span),
            ("/open", span),
            ("", {}),
            ("/versions", {}),
        ]:
            r = client.get(base + path, params=params, headers=READ)
            assert r.status_code == 200, (name, path, r.text)
    adhoc = {"id": "adhoc", "window_seconds": 3600, **DEFINITIONS["every_step_kind"]}
    r = client.post("/v1/funnels/report", json={"funnel": adhoc, **span}, headers=READ)
    assert r.status_code == 200, r.text
    for path in ("/v1/funnels", "/v1/stats"):
        assert client.get(path, headers=READ).status_code == 200, path

    # A new version, a report of the old one, an archive.
    r = client.put("/v1/funnels/held", json={"window_seconds": 600, "steps": _PLAIN}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = client.get("/v1/funnels/held/report", params={**span, "version": 1}, headers=READ)
    assert r.status_code == 200, r.text
    assert client.delete("/v1/funnels/held", headers=ADMIN).status_code == 200

    # Keys: create, list, revoke.
    r = client.post("/v1/keys", json={"scope": "read", "label": "dash"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert client.get("/v1/keys", headers=ADMIN).status_code == 200
    assert client.delete(f"/v1/keys/{r.json()['key_id']}", headers=ADMIN).status_code == 200

    # Erasures, by visitor and by user, carried out by the processor.
    assert client.delete("/v1/visitors/v0", headers=ADMIN).status_code == 202
    assert client.delete("/v1/users/u1", headers=ADMIN).status_code == 202

    def erased() -> bool:
        rows = ch.query_rows_sync("SELECT count() FROM events WHERE visitor_id = 'v0'")
        return processed() and int(rows[0][0]) == 0

    _wait("the erasures", erased)
