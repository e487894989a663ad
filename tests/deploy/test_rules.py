"""The alert rules, the Prometheus config that loads them and the Alertmanager example,
checked by the tools that run them; the rules' behaviour by promtool's unit tests on
synthetic series (rules_test.yml: each alert fires when it should, and a quiet night or a
steady funnel fires nothing)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).parents[2]


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_config_loads_the_rules(promtool: str) -> None:
    out = run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert "1 rule files found" in out


def test_the_rules_fire_when_they_should_and_only_then(promtool: str) -> None:
    out = run(promtool, "test", "rules", "tests/deploy/rules_test.yml")
    assert "SUCCESS" in out


def test_the_alertmanager_example_is_valid(amtool: str) -> None:
    run(amtool, "check-config", "deploy/alertmanager/alertmanager.yml")
