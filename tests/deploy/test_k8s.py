"""deploy/k8s/, checked offline: every manifest against the Kubernetes API schemas
(kubernetes-validate, which bundles them; strict, so a misspelt field fails), and what the
schemas cannot see: probes on the ports the processes listen on, a PodDisruptionBudget and
a Service that select real pods, resources on every container, processors no more than
the topic's partitions, settings the processes know, the ClickHouse pin and cluster name
shared with docker-compose.yml and the migrations."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from funnelstream.config import IngestSettings, ProcessorSettings, QueryApiSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The Kubernetes release the manifests are checked against (the oldest we claim, README).
KUBERNETES = "1.29.0"
# Created by hand, with values that must not be committed (deploy/k8s/README.md).
SECRETS = {"funnelstream-config", "funnelstream-secrets", "clickhouse-secrets"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


@functools.cache
def documents() -> list[dict[str, Any]]:
    """Parsed once: tests that change one work on a deep copy."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def by_kind(kind: str) -> Iterator[dict[str, Any]]:
    return (d for d in documents() if d["kind"] == kind)


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def schema_error(document: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


def test_every_manifest_fits_the_kubernetes_schema() -> None:
    docs = documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget"}
    errors = {f"{d['kind']}/{d['metadata']['name']}": schema_error(d) for d in docs}
    assert {k: e for k, e in errors.items() if e} == {}


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["spec"].__setitem__("replica", 3),  # misspelt
        lambda d: d["spec"].__setitem__("replicas", "three"),  # wrong type
        lambda d: containers(d)[0].pop("name"),  # required
    ],
)
def test_the_schema_check_catches_a_broken_manifest(change: Any) -> None:
    ingest = copy.deepcopy(
        next(d for d in by_kind("Deployment") if "ingest" in d["metadata"]["name"])
    )
    assert schema_error(ingest) is None
    change(ingest)
    assert schema_error(ingest) is not None


def funnelstream_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in documents():
        if workload["kind"] in {"Deployment", "StatefulSet"}:
            for container in containers(workload):
                if container["image"].startswith("funnelstream:"):
                    yield workload, container


def test_funnelstream_probes_readyz_and_healthz_on_the_port_it_listens_on() -> None:
    seen = set()
    for workload, container in funnelstream_containers():
        args = container["args"]
        port = int(args[args.index("--port") + 1])
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (workload["metadata"]["name"], probe)
            assert named.get(get["port"], get["port"]) == port
        seen.add(args[0])
    assert seen == {"ingest", "process", "query-api"}


def test_every_container_has_resources_and_every_pod_a_disruption_budget() -> None:
    budgets = list(by_kind("PodDisruptionBudget"))
    for workload in documents():
        if workload["kind"] not in WORKLOADS:
            continue
        for container in containers(workload):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
        if workload["kind"] != "Job":
            labels = pod_labels(workload)
            assert any(selects(b["spec"]["selector"]["matchLabels"], labels) for b in budgets), (
                workload["metadata"]["name"]
            )


def test_services_select_pods_on_ports_they_expose() -> None:
    workloads = [w for w in documents() if w["kind"] in {"Deployment", "StatefulSet"}]
    for service in by_kind("Service"):
        matching = [w for w in workloads if selects(service["spec"]["selector"], pod_labels(w))]
        assert matching, service["metadata"]["name"]
        ports = {p.get("name") for w in matching for c in containers(w) for p in c["ports"]} | {
            p["containerPort"] for w in matching for c in containers(w) for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, service["metadata"]["name"]


def settings() -> dict[str, str]:
    (config,) = (d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "funnelstream-env")
    return dict(config["data"])


def test_processors_are_no_more_than_partitions() -> None:
    (processor,) = (d for d in by_kind("Deployment") if "processor" in d["metadata"]["name"])
    assert 1 <= processor["spec"]["replicas"] <= int(settings()["FUNNELSTREAM_PARTITIONS"])


def test_the_configmap_sets_only_settings_the_processes_know() -> None:
    known = {
        f"FUNNELSTREAM_{name.upper()}"
        for cls in (IngestSettings, ProcessorSettings, QueryApiSettings)
        for name in cls.model_fields
    }
    assert set(settings()) <= known


def test_referenced_config_and_secrets_exist_or_are_documented() -> None:
    configmaps = {d["metadata"]["name"] for d in by_kind("ConfigMap")}
    readme = (K8S / "README.md").read_text()
    for workload in documents():
        if workload["kind"] not in WORKLOADS:
            continue
        spec = workload["spec"]["template"]["spec"]
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                else:
                    assert source["secretRef"]["name"] in SECRETS
            for env in container.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["name"] in SECRETS
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in SECRETS
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
    for secret in SECRETS:
        assert f"kubectl create secret generic {secret}" in readme, secret


def test_clickhouse_matches_the_compose_pin_and_the_cluster_name() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pin = compose["services"]["clickhouse"]["image"].split(":")[1]
    images = [c["image"] for w in documents() if w["kind"] == "StatefulSet" for c in containers(w)]
    assert images and all(image.split(":")[1] == pin for image in images), images
    cluster = settings()["FUNNELSTREAM_CLICKHOUSE_CLUSTER"]
    (config,) = (d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "clickhouse-config")
    assert f"<{cluster}>" in config["data"]["cluster.xml"]
