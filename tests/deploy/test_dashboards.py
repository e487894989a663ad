"""The provisioned dashboards are the ones deploy/grafana/dashboards.py makes."""

from __future__ import annotations

import json

import pytest

from deploy.grafana.dashboards import DASHBOARDS, OUT, render


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_the_committed_json_is_what_the_code_makes(name: str) -> None:
    committed = (OUT / name).read_text()
    assert committed == render(DASHBOARDS[name]), (
        f"deploy/grafana/dashboards/{name} is stale: run python deploy/grafana/dashboards.py"
    )


def test_no_dashboard_file_is_left_without_its_code() -> None:
    assert sorted(p.name for p in OUT.glob("*.json")) == sorted(DASHBOARDS)


def test_every_panel_queries_prometheus_by_the_provisioned_uid() -> None:
    provisioned = (OUT.parent / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: prometheus" in provisioned
    for name in DASHBOARDS:
        board = json.loads((OUT / name).read_text())
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        ids = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: panels on top of each other"
