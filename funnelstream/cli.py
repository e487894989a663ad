"""`funnelstream` command line: serve (embedded), split-mode parts, import, migrate."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from funnelstream.config import (
    ConfigError,
    IngestSettings,
    ProcessorSettings,
    load_config,
)

IMPORT_BATCH = 500


def _settings_env(args: argparse.Namespace) -> None:
    """CLI flags override FUNNELSTREAM_* variables, which the settings classes read."""
    for name in ("data_dir", "config", "log_backend", "kafka_bootstrap", "clickhouse_dsn"):
        value = getattr(args, name, None)
        if value is not None:
            key = "CONFIG_FILE" if name == "config" else name.upper()
            os.environ[f"FUNNELSTREAM_{key}"] = str(value)


def _run_server(args: argparse.Namespace, roles: frozenset[str]) -> int:
    from funnelstream.app import build_app

    _settings_env(args)
    try:
        ingest_settings = IngestSettings()
        processor_settings = ProcessorSettings()
        config = load_config(ingest_settings)
        app = build_app(ingest_settings, processor_settings, roles)
    except (ConfigError, ValueError) as exc:
        print(f"funnelstream: configuration error: {exc}", file=sys.stderr)
        return 2
    base = f"http://{args.host}:{args.port}"
    print(f"Funnelstream ({', '.join(sorted(roles))}) on {base}", flush=True)
    print(f"  data dir: {ingest_settings.data_dir.resolve()}", flush=True)
    if config.path is not None:
        print(f"  config:   {config.path.resolve()}", flush=True)
    for p in config.projects:
        print(
            f"  project {p.id}: write key {p.write_key.get_secret_value()}  "
            f"read key {p.read_key.get_secret_value()}",
            flush=True,
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, access_log=False
        )
    )
    if getattr(args, "demo", False):
        project = config.projects[0]
        threading.Thread(
            target=_demo,
            args=(base, project.write_key.get_secret_value(), project.read_key.get_secret_value()),
            daemon=True,
        ).start()
    server.run()
    return 0


def _demo(base: str, write_key: str, read_key: str) -> None:
    from funnelstream.demo import storefront

    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(300):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        traffic = storefront(visitors=2000, start_ms=int(time.time() * 1000) - 3 * 3600_000)
        headers = {"Authorization": f"Bearer {write_key}"}
        for i in range(0, len(traffic.events), IMPORT_BATCH):
            client.post(
                "/v1/events", json={"batch": traffic.events[i : i + IMPORT_BATCH]}, headers=headers
            ).raise_for_status()
        print(f"demo: sent {len(traffic.events)} events from 2000 visitors", flush=True)
        for _ in range(600):
            if client.get("/healthz").json().get("lag") == 0:
                break
            time.sleep(0.1)
        report = client.get(
            "/v1/funnels/checkout/report", headers={"Authorization": f"Bearer {read_key}"}
        ).json()
        print("demo: funnel 'checkout' (GET /v1/funnels/checkout/report)", flush=True)
        for step in report["steps"]:
            median = step["median_seconds_from_start"]
            print(
                f"  {step['index'] + 1}. {step['event']:<17} {step['visitors']:>5} visitors  "
                f"{step['conversion_from_start'] * 100:5.1f}% of start  "
                f"median {median if median is not None else '-'}s",
                flush=True,
            )


def _read_events(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        if fmt == "ndjson":
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)
            return
        for row in csv.DictReader(fh):
            event: dict[str, Any] = {}
            props: dict[str, Any] = {}
            for key, value in row.items():
                if value in (None, ""):
                    continue
                if key == "properties":
                    props.update(json.loads(value))
                elif key.startswith("properties."):
                    props[key.removeprefix("properties.")] = value
                else:
                    event[key] = value
            if props:
                event["properties"] = props
            yield event


def _import(args: argparse.Namespace) -> int:
    """Send a history file through ingest, exactly like live traffic, in timestamp order."""
    path = Path(args.file)
    fmt = args.format or ("csv" if ".csv" in path.suffixes else "ndjson")
    events = list(_read_events(path, fmt))
    # Sorting lets the processor place every event in live state (see allowed lateness).
    events.sort(key=lambda e: str(e.get("timestamp", "")).zfill(30))
    headers = {"Authorization": f"Bearer {args.write_key}"}
    sent = rejected = 0
    with httpx.Client(base_url=args.host, timeout=60) as client:
        for i in range(0, len(events), IMPORT_BATCH):
            batch = events[i : i + IMPORT_BATCH]
            for attempt in range(30):
                response = client.post("/v1/events", json={"batch": batch}, headers=headers)
                if response.status_code not in (429, 503):
                    break
                time.sleep(float(response.headers.get("Retry-After", "1")) * (1 + attempt / 10))
            if response.status_code >= 400 and response.status_code != 207:
                print(
                    f"import: batch at {i}: {response.status_code} {response.text}", file=sys.stderr
                )
                return 1
            body = response.json()
            sent += body.get("accepted", 0)
            for error in body.get("errors", []):
                rejected += 1
                print(
                    f"import: event {i + error['index']}: {error['field']} {error['message']}",
                    file=sys.stderr,
                )
    print(f"imported {sent} events ({rejected} rejected) from {path}")
    return 0 if rejected == 0 else 1


def _migrate(args: argparse.Namespace) -> int:
    from funnelstream.clickhouse import ClickHouse, migrate

    _settings_env(args)
    settings = IngestSettings()
    applied = migrate(ClickHouse(settings.resolved_clickhouse_dsn()))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _server_args(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--config", help="TOML file with [[projects]] and [[funnels]]")
    p.add_argument("--log-backend", dest="log_backend", choices=["embedded", "kafka"])
    p.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    p.add_argument("--clickhouse-dsn", dest="clickhouse_dsn")
    p.add_argument("--log-level", dest="log_level", default="warning")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="funnelstream")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="ingest + processor + query API in one process")
    _server_args(serve, 8080)
    serve.add_argument("--demo", action="store_true", help="send demo traffic, print a funnel")
    for name, port in (("ingest", 8081), ("process", 8082), ("query-api", 8083)):
        _server_args(sub.add_parser(name, help=f"run only the {name} part"), port)
    imp = sub.add_parser("import", help="send a CSV or NDJSON history file through ingest")
    imp.add_argument("file")
    imp.add_argument("--host", default="http://127.0.0.1:8080")
    imp.add_argument("--write-key", required=True)
    imp.add_argument("--format", choices=["csv", "ndjson"])
    mig = sub.add_parser("migrate", help="apply ClickHouse migrations")
    mig.add_argument("--data-dir", dest="data_dir")
    mig.add_argument("--clickhouse-dsn", dest="clickhouse_dsn")
    args = parser.parse_args(argv)
    roles = {
        "serve": frozenset({"ingest", "processor", "query"}),
        "ingest": frozenset({"ingest"}),
        "process": frozenset({"processor"}),
        "query-api": frozenset({"query"}),
    }
    if args.command in roles:
        return _run_server(args, roles[args.command])
    if args.command == "import":
        return _import(args)
    return _migrate(args)


if __name__ == "__main__":
    sys.exit(main())
