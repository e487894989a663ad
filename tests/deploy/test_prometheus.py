"""Every PromQL expression of the dashboards and the rules, run on a real Prometheus
(Debian's) scraping a real `funnelstream serve` that took a generated storefront's
traffic: each returns data, and the funnel figures equal what the service reports."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.grafana.dashboards import (
    DASHBOARDS,
    OUT,
    dropped_after,
    from_previous,
    from_start,
    reached,
)
from funnelstream.demo import storefront
from tests.e2e.server import Server, free_port

pytestmark = [pytest.mark.prometheus, pytest.mark.clickhouse]

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
# What the dashboards' variables and Grafana's own macros stand for here.
MACROS = {
    "$project": "shop",
    "$funnel": "checkout",
    "$__rate_interval": "15s",
    "$__range": "10m",
}
# Series that exist only once the thing they count has happened (a dead letter, a
# quarantined funnel, a 5xx): a healthy run makes none, so for these the test asks that
# the metric is exported (its HELP line on /metrics) instead of data.
EVENT_DRIVEN = {
    "funnelstream_processor_dead_letters_total",
    "funnelstream_funnels_quarantined",
    'funnelstream_http_responses_total{route_kind="ingest", code="5xx"}',
}
# A vector selector: a metric name (ours, or Prometheus' own `up`) and its matchers.
SELECTOR = re.compile(r"\b(funnelstream[a-z0-9_:]*|up)\b(\{[^}]*\})?")


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "funnelstream-processor", "static_configs": [{"targets": [target]}]}
            ],
        }
        workdir.mkdir(parents=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_scraping(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text()[-3000:])
            try:
                ready = httpx.get(f"{self.base}/-/ready", timeout=2).status_code == 200
                if ready and self.query('up{job="funnelstream-processor"} == 1'):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"no scrape: {self.log_path.read_text()[-3000:]}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        r = httpx.get(
            f"{self.base}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10
        )
        values: list[str] = r.json()["data"]
        return values

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data").start()
    yield s
    s.stop()


@pytest.fixture
def prometheus(prometheus_binary: str, tmp_path: Path, server: Server) -> Iterator[Prometheus]:
    p = Prometheus(prometheus_binary, tmp_path / "prometheus", f"127.0.0.1:{server.port}")
    try:
        p.wait_scraping()
        yield p
    finally:
        p.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for name in DASHBOARDS:
        board = json.loads((OUT / name).read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((f"{name}: {panel['title']}", expand(target["expr"])))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def expand(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def selectors(expr: str) -> set[str]:
    return {name + (matchers or "") for name, matchers in SELECTOR.findall(expr)}


def names(found: set[str]) -> set[str]:
    return {selector.split("{")[0] for selector in found}


def by_step(result: list[dict[str, Any]]) -> list[float]:
    values = {int(s["metric"]["step"]): float(s["value"][1]) for s in result}
    return [values[k] for k in sorted(values)]


def send_traffic(server: Server) -> list[int]:
    """An hour of storefront traffic from two hours ago, a late event that re-folds one
    visitor (corrections), an invalid event (a refusal) and a report (query latency)."""
    now = int(time.time() * 1000)
    traffic = storefront(visitors=800, start_ms=now - 7_200_000, seed=11)
    for i in range(0, len(traffic.events), 500):
        assert server.post({"batch": traffic.events[i : i + 500]}).status_code == 202
    server.wait_processed()
    first = traffic.events[0]
    # The visitor's first event again, an hour earlier (a new event id): too late for
    # the live state (lateness 10 minutes), so the visitor is re-folded.
    late = {k: v for k, v in first.items() if k != "event_id"}
    late["timestamp"] = int(str(first["timestamp"])) - 3_600_000
    invalid = {"event": "page_view", "timestamp": now}  # no visitor_id
    assert server.post({"batch": [late, invalid]}).status_code == 207
    server.wait_processed()
    server.report(**{"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})
    return traffic.reached


def test_every_dashboard_and_rule_query_returns_data(
    server: Server, prometheus: Prometheus
) -> None:
    reached_here = send_traffic(server)
    live = server.live()
    # Enough scrapes after the last batch for rates, and for the rules to evaluate.
    time.sleep(4)
    selected = 'project="shop", funnel="checkout"'

    # The funnel figures as Prometheus has them are the service's own.
    transitions = prometheus.query(
        f"sum by (step) (funnelstream_funnel_transitions_total{{{selected}}})"
    )
    assert by_step(transitions) == reached_here
    at_stage = prometheus.query(
        f"sum by (step) (funnelstream_funnel_visitors_at_stage{{{selected}}})"
    )
    assert by_step(at_stage) == [s["at_stage"] for s in live["stages"]]
    fixes = prometheus.query(
        f"sum by (kind) (funnelstream_funnel_transition_corrections_total{{{selected}}})"
    )
    assert {s["metric"]["kind"] for s in fixes} == {"retracted", "corrected"}

    # The funnel panels' arithmetic, as the dashboards write it: conversion from the start
    # and from the step before, and drop-off, equal the storefront's known figures. Each
    # is a ratio within one query, where one extrapolation scales every step's increase.
    def panel(expr: str) -> dict[str, float]:
        return {s["metric"]["step"]: float(s["value"][1]) for s in prometheus.query(expand(expr))}

    steps = [str(k + 1) for k in range(len(reached_here))]
    assert panel(from_start("$__range")) == pytest.approx(
        {k: r / reached_here[0] for k, r in zip(steps, reached_here, strict=True)}
    )
    assert panel(from_previous("$__range")) == pytest.approx(
        {steps[k]: reached_here[k] / reached_here[k - 1] for k in range(1, len(steps))}
    )
    dropped_share = f"({dropped_after('$__range')}) / on (step) ({reached('$__range')})"
    assert panel(dropped_share) == pytest.approx(
        {
            steps[k]: (reached_here[k] - reached_here[k + 1]) / reached_here[k]
            for k in range(len(steps) - 1)
        }
    )

    # The dashboards' variables list the funnel.
    assert "shop" in prometheus.label_values("project", "funnelstream_funnel_visitors_at_stage")
    assert "checkout" in prometheus.label_values(
        "funnel", 'funnelstream_funnel_visitors_at_stage{project="shop"}'
    )

    exported = httpx.get(f"{server.base}/metrics", timeout=10).text

    def event_driven_and_exported(expr: str) -> bool:
        found = selectors(expr)
        return found <= EVENT_DRIVEN and all(
            f"# HELP {selector.split('{')[0]} " in exported for selector in found
        )

    empty = [
        (where, expr)
        for where, expr in dashboard_queries()
        if not prometheus.query(expr) and not event_driven_and_exported(expr)
    ]
    assert not empty, f"dashboard queries without data: {empty}"

    # Recorded series a healthy run of a minute cannot have: over the day before an hour
    # ago, or made of event-driven series. Their own selectors are checked instead.
    conditional: set[str] = set()
    for rule in rules():
        found = selectors(rule["expr"])
        if "record" in rule and (
            "offset" in rule["expr"] or found & EVENT_DRIVEN or names(found) & conditional
        ):
            conditional.add(rule["record"])
    missing = []
    for rule in rules():
        where = rule.get("record") or rule["alert"]
        recorded = "record" in rule and rule["record"] not in conditional
        if recorded and not (prometheus.query(rule["expr"]) and prometheus.query(rule["record"])):
            missing.append((where, rule["expr"]))
        for selector in selectors(rule["expr"]):
            if names({selector}) & conditional:
                continue
            if not prometheus.query(selector) and not event_driven_and_exported(selector):
                missing.append((where, selector))
    assert not missing, f"rule expressions without data: {missing}"
    # Prometheus evaluated every rule without an error.
    groups = httpx.get(f"{prometheus.base}/api/v1/rules", timeout=10).json()["data"]["groups"]
    health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    assert len(health) == len(rules())
    assert set(health.values()) == {"ok"}, health
    # Nothing fires on a healthy run.
    firing = prometheus.query('ALERTS{alertstate="firing"}')
    assert not firing, firing
