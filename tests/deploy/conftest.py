"""Debian's Prometheus tools for the tests marked `prometheus` (deploy/prometheus/install.sh):
missing, a test is skipped here and fails in CI, where setup.sh installs them."""

from __future__ import annotations

import os
import shutil

import pytest


def _tool(request: pytest.FixtureRequest, name: str) -> str:
    if request.node.get_closest_marker("prometheus") is None:
        pytest.fail(f"a test using {name} must be marked @pytest.mark.prometheus")
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: run deploy/prometheus/install.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def promtool(request: pytest.FixtureRequest) -> str:
    return _tool(request, "promtool")


@pytest.fixture
def amtool(request: pytest.FixtureRequest) -> str:
    return _tool(request, "amtool")


@pytest.fixture
def prometheus_binary(request: pytest.FixtureRequest) -> str:
    return _tool(request, "prometheus")


@pytest.fixture
def alertmanager_binary(request: pytest.FixtureRequest) -> str:
    # Debian names the Alertmanager binary after its package.
    return _tool(request, "prometheus-alertmanager")
