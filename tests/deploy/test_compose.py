"""docker-compose.yml, checked offline: the Compose Specification's own JSON schema (what
`docker compose config` validates against; vendored in tests/deploy/data/, the Docker CLI's
compose plugin is not on every machine), plus what the schema cannot see: services named
in `depends_on`, named volumes, and files mounted from the repository exist."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
# Made by the user from deploy/funnelstream.example.toml (the compose file's header).
USER_FILES = {"./deploy/funnelstream.toml"}


def load() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def reference_errors(document: dict[str, Any]) -> list[str]:
    services: dict[str, Any] = document["services"]
    volumes = set(document.get("volumes") or {})
    errors = []
    for name, service in services.items():
        for needed in service.get("depends_on") or {}:
            if needed not in services:
                errors.append(f"{name}: depends on unknown service {needed}")
        for mount in service.get("volumes") or []:
            source = str(mount).split(":")[0]
            if source.startswith("./"):
                if source not in USER_FILES and not (ROOT / source).exists():
                    errors.append(f"{name}: mounts missing {source}")
            elif source not in volumes:
                errors.append(f"{name}: undeclared volume {source}")
    return errors


def test_the_compose_file_is_valid() -> None:
    document = load()
    assert schema_errors(document) == []
    assert reference_errors(document) == []


@pytest.mark.parametrize(
    "path, value",
    [
        (["services", "ingest", "comand"], ["ingest"]),  # a misspelt key
        (["services", "ingest", "ports"], "8081"),  # a wrong type
        (["services", "clickhouse", "healthcheck", "interval"], 5),
    ],
)
def test_the_schema_catches_a_broken_file(path: list[str], value: object) -> None:
    document = copy.deepcopy(load())
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(document)


def test_references_are_checked() -> None:
    document = copy.deepcopy(load())
    document["services"]["ingest"]["depends_on"] = {"kafak": {"condition": "service_healthy"}}
    document["services"]["grafana"]["volumes"].append("./deploy/grafana/nope:/x:ro")
    assert len(reference_errors(document)) == 2


def test_every_funnelstream_service_has_a_readiness_healthcheck() -> None:
    checked = []
    for name, service in load()["services"].items():
        if "build" not in service:
            continue
        port = service["command"][service["command"].index("--port") + 1]
        assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"]), name
        checked.append(name)
    assert checked  # the services are recognised by `build`: none found checks nothing


def test_the_image_holds_every_package() -> None:
    """The Dockerfile copies each package pyproject.toml installs (a missing one installs a
    package that fails on import)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M))
    assert {p.rstrip("*") for p in packages} <= copied


def listening_port(service: dict[str, Any]) -> int | None:
    """The port a Funnelstream service's command listens on."""
    command = service.get("command") or []
    return int(command[command.index("--port") + 1]) if "--port" in command else None


def test_prometheus_scrapes_every_funnelstream_service_where_it_listens() -> None:
    services = load()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        f"{name}:{listening_port(service)}"
        for name, service in services.items()
        if "build" in service
    }
    assert targets == expected
