"""Run `funnelstream serve` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_test"
read_key = "rk_test"
admin_key = "ak_test"

[[funnels]]
id = "checkout"
project = "shop"
window_seconds = 86400
steps = [
  { event = "page_view" },
  { event = "product_view" },
  { event = "add_to_cart" },
  { event = "checkout_started" },
  { event = "purchase" },
]
"""
WRITE = {"Authorization": "Bearer wk_test"}
READ = {"Authorization": "Bearer rk_test"}
ADMIN = {"Authorization": "Bearer ak_test"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`funnelstream serve` by default; `command` and `args` run another part (split mode:
    `ingest`, `process`, `query-api`) or add flags such as `--log-backend kafka`. `cwd` and
    a PYTHONPATH in `env` run another tree of the code (an older release)."""

    def __init__(
        self,
        data_dir: Path,
        config: str = CONFIG,
        *,
        command: str = "serve",
        args: Sequence[str] = (),
        cwd: Path | None = None,
        **env: str,
    ) -> None:
        self.command = command
        self.args = list(args)
        self.data_dir = data_dir
        self.config_path = data_dir / "test.toml"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / ("server.log" if command == "serve" else f"{command}.log")

    def start(self, timeout: float = 60) -> Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "funnelstream.cli",
                self.command,
                "--data-dir",
                str(self.data_dir),
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def wait_processed(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = httpx.get(f"{self.base}/healthz", timeout=5).json()
            if health.get("lag") == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"not processed in {timeout}s: {health}")

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.base}/v1/events", json=body, headers=WRITE, timeout=30, **kwargs)

    def report(self, funnel: str = "checkout", **params: str) -> dict[str, Any]:
        r = httpx.get(
            f"{self.base}/v1/funnels/{funnel}/report", params=params, headers=READ, timeout=60
        )
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def live(self, funnel: str = "checkout") -> dict[str, Any]:
        r = httpx.get(f"{self.base}/v1/funnels/{funnel}/live", headers=READ, timeout=30)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result


def stats(server: Server) -> dict[str, Any]:
    r = httpx.get(f"{server.base}/v1/stats", headers=READ, timeout=60)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result
