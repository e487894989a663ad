"""The Alertmanager example routes alerts to its webhook: Debian's Alertmanager runs the
example file, with only the webhook's address (a server of this test) and the grouping
wait (1 s instead of 30 s) changed, and gets alerts posted as Prometheus posts them."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.server import free_port

pytestmark = pytest.mark.prometheus

EXAMPLE = Path(__file__).parents[2] / "deploy" / "alertmanager" / "alertmanager.yml"


class Webhook:
    """An HTTP server keeping the notifications posted to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/funnelstream"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alertnames(self) -> set[str]:
        return {a["labels"]["alertname"] for n in self.received for a in n["alerts"]}


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture
def alertmanager(alertmanager_binary: str, tmp_path: Path, webhook: Webhook) -> Iterator[str]:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["route"]["group_wait"] = "1s"
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook.url
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            alertmanager_binary,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError((tmp_path / "alertmanager.log").read_text()[-3000:])
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": f"{name} (test)"},
    }


def wait_for(webhook: Webhook, names: set[str], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not names <= webhook.alertnames():
        time.sleep(0.1)


def test_pages_and_tickets_reach_the_webhook(alertmanager: str, webhook: Webhook) -> None:
    posted = [
        alert("FunnelstreamStepConversionDropped", "page", project="shop", funnel="checkout"),
        alert("FunnelstreamDeadLetters", "ticket", reason="undecodable"),
    ]
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=posted).status_code == 200
    wait_for(webhook, {"FunnelstreamStepConversionDropped", "FunnelstreamDeadLetters"})
    assert webhook.alertnames() == {"FunnelstreamStepConversionDropped", "FunnelstreamDeadLetters"}
    assert {n["receiver"] for n in webhook.received} == {"webhook"}
    assert all(n["status"] == "firing" for n in webhook.received)


def test_a_processor_down_silences_the_conversion_alert(
    alertmanager: str, webhook: Webhook
) -> None:
    down = alert("FunnelstreamProcessorDown", "page", instance="p1:8082")
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[down]).status_code == 200
    wait_for(webhook, {"FunnelstreamProcessorDown"})
    dropped = alert("FunnelstreamStepConversionDropped", "page", project="shop", funnel="checkout")
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[dropped]).status_code == 200
    # Twice the grouping wait: it would have been sent by now.
    time.sleep(3)
    assert webhook.alertnames() == {"FunnelstreamProcessorDown"}
