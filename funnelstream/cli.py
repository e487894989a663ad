"""`funnelstream` command line: serve (embedded), split-mode parts, import, migrate, keys, erase."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from funnelstream import logs
from funnelstream.config import (
    ConfigError,
    IngestSettings,
    LogSettings,
    ProcessorSettings,
    load_config,
)
from funnelstream.logs import LogFormat

IMPORT_BATCH = 500
# Commands that run a server: JSON log lines unless told otherwise; the rest print text.
SERVICES = frozenset({"serve", "serve-ingest", "ingest", "process", "query-api"})


def _settings_env(args: argparse.Namespace) -> None:
    """CLI flags override FUNNELSTREAM_* variables, which the settings classes read."""
    for name in (
        "data_dir",
        "config",
        "log_backend",
        "kafka_bootstrap",
        "clickhouse_dsn",
        "clickhouse_cluster",
    ):
        value = getattr(args, name, None)
        if value is not None:
            key = "CONFIG_FILE" if name == "config" else name.upper()
            os.environ[f"FUNNELSTREAM_{key}"] = str(value)


def _run_server(args: argparse.Namespace, roles: frozenset[str]) -> int:
    from funnelstream.app import ROLES, ServePart, build_app
    from funnelstream.front import TrustForwarded
    from funnelstream.ingest_process import IngestProcess, listening_socket

    _settings_env(args)
    # `serve`: this process owns the embedded engine (processor, query API) on a loopback
    # port; ingest runs in a process of its own on the public port (ingest_process.py).
    ingest: IngestProcess | None = None
    sockets: list[socket.socket] | None = None
    part: ServePart | None = None
    if roles == ROLES:
        try:
            public = listening_socket(args.host, args.port)
        except OSError as exc:
            print(f"funnelstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
        sockets = [listening_socket("127.0.0.1", 0)]
        owner_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        ingest = IngestProcess(public, owner_url, args.log_level)
        roles, part = frozenset({"processor", "query"}), "owner"
    try:
        ingest_settings = IngestSettings()
        processor_settings = ProcessorSettings()
        config = load_config(ingest_settings)
        app = build_app(
            ingest_settings, processor_settings, roles, serve_part=part, ingest_process=ingest
        )
    except (ConfigError, ValueError) as exc:
        print(f"funnelstream: configuration error: {exc}", file=sys.stderr)
        return 2
    base = f"http://{args.host}:{args.port}"
    shown = ROLES if ingest is not None else roles
    print(f"Funnelstream ({', '.join(sorted(shown))}) on {base}", flush=True)
    print(f"  data dir: {ingest_settings.data_dir.resolve()}", flush=True)
    if config.path is not None:
        print(f"  config:   {config.path.resolve()}", flush=True)
    # The keys themselves only in local mode (the demo's tour reads them); elsewhere a
    # start would put every read and admin key in the container's log.
    local = ingest_settings.mode == "local"
    for p in config.projects:
        admin = p.admin_key.get_secret_value() if p.admin_key else "(none)"
        keys = (
            f"write key {p.write_key.get_secret_value()}  "
            f"read key {p.read_key.get_secret_value()}  admin key {admin}"
            if local
            else "keys from the config file (see `funnelstream keys list`)"
        )
        print(f"  project {p.id}: {keys}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            TrustForwarded(app, ingest.token) if ingest is not None else app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            # Our handler (funnelstream/logs.py) formats uvicorn's lines too.
            log_config=None,
            access_log=False,
            # Whose X-Forwarded-For is believed is the `trusted_proxies` setting's alone
            # (funnelstream/client_address.py); uvicorn's own would trust 127.0.0.1.
            proxy_headers=False,
        )
    )
    if getattr(args, "demo", False):
        project = config.projects[0]
        threading.Thread(
            target=_demo,
            args=(base, project.write_key.get_secret_value(), project.read_key.get_secret_value()),
            daemon=True,
        ).start()
    if ingest is not None:
        ingest.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run(sockets=sockets)
    if ingest is not None and ingest.fatal is not None:
        print(f"funnelstream: {ingest.fatal}", file=sys.stderr)
        return 1
    return 0


def _run_serve_ingest(args: argparse.Namespace) -> int:
    """The ingest process of `serve` (funnelstream/ingest_process.py), on the socket its
    owner bound; settings come from the environment the owner passes on."""
    from funnelstream.app import build_app
    from funnelstream.config import QueryApiSettings
    from funnelstream.front import PublicFront, forward_body_caps
    from funnelstream.ingest_process import TOKEN_ENV, exit_with_parent
    from funnelstream.logs import RequestIds
    from funnelstream.sdk_paths import SDK_PATHS
    from ingest.routes import router as ingest_router

    token = os.environ.pop(TOKEN_ENV, None)
    if token is None:
        print(f"funnelstream serve-ingest: started by `serve` only ({TOKEN_ENV})", file=sys.stderr)
        return 2
    exit_with_parent(args.parent)
    try:
        app = build_app(
            IngestSettings(), ProcessorSettings(), frozenset({"ingest"}), serve_part="ingest"
        )
        body_caps = forward_body_caps(QueryApiSettings())
    except (ConfigError, ValueError) as exc:
        print(f"funnelstream serve-ingest: configuration error: {exc}", file=sys.stderr)
        return 2
    ingest_paths = frozenset(getattr(route, "path", "") for route in ingest_router.routes)
    ingest_paths |= SDK_PATHS
    front = PublicFront(
        app,
        ingest_paths,
        app.state.components,
        args.owner,
        token,
        body_caps,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            RequestIds(front, access_log=LogSettings().access_log),
            log_level=args.log_level,
            log_config=None,
            access_log=False,
            proxy_headers=False,
        )
    )
    server.run(sockets=[socket.socket(fileno=args.fd)])
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


def _import(args: argparse.Namespace) -> int:
    """Send a history file through ingest, exactly like live traffic (funnelstream.importer)."""
    from funnelstream.importer import Importer, Options

    try:
        importer = Importer(
            Options(
                path=Path(args.file),
                host=args.host,
                write_key=args.write_key,
                fmt=args.format,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                give_up_after=args.give_up_after,
                quiet=args.quiet,
            )
        )
    except ValueError as exc:  # batch size or concurrency out of range
        print(f"funnelstream import: {exc}", file=sys.stderr)
        return 2
    return importer.run()


def _erase(args: argparse.Namespace) -> int:
    """Erase a visitor or a user through the query API (DELETE /v1/visitors or /v1/users),
    which records the erasure in the log; the admin key names the project."""
    from urllib.parse import quote

    key = args.admin_key or os.environ.get("FUNNELSTREAM_ADMIN_KEY", "")
    if not key:
        print(
            "funnelstream erase: --admin-key or FUNNELSTREAM_ADMIN_KEY is required", file=sys.stderr
        )
        return 2
    path = (
        f"/v1/visitors/{quote(args.visitor, safe='')}"
        if args.visitor is not None
        else (f"/v1/users/{quote(args.user, safe='')}")
    )
    try:
        with httpx.Client(base_url=args.host, timeout=30) as client:
            response = client.delete(path, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        print(f"funnelstream erase: {args.host}: {exc}", file=sys.stderr)
        return 3
    if response.status_code != 202:
        print(f"funnelstream erase: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    body = response.json()
    print(
        f"erasure {body['erasure_id']} recorded for {len(body['visitors'])} visitor(s); "
        "the processor erases them when it reaches it (see /healthz lag)"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from funnelstream.clickhouse import ClickHouse, migrate
    from funnelstream.cluster_schema import render_all, statements_of

    _settings_env(args)
    settings = IngestSettings()
    if args.print:
        # The DDL for review, or to apply by hand: every statement is idempotent.
        if not settings.clickhouse_cluster:
            print("funnelstream: --print needs --cluster", file=sys.stderr)
            return 2
        print("".join(f"{s};\n\n" for s in render_all(settings.clickhouse_cluster)), end="")
        return 0
    ch = ClickHouse(settings.resolved_clickhouse_dsn())
    applied = migrate(ch, statements_of(settings.clickhouse_cluster))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _keys(args: argparse.Namespace) -> int:
    """`keys create|list|revoke`, straight against ClickHouse (funnelstream/key_store.py)."""
    from funnelstream.clickhouse import (
        ClickHouse,
        ClickHouseQueryError,
        ClickHouseUnavailable,
        migrate,
    )
    from funnelstream.key_store import KeyStore, load_secret

    _settings_env(args)
    try:
        settings = IngestSettings()
        store = KeyStore(load_config(settings), load_secret(settings))
    except (ConfigError, ValueError) as exc:
        print(f"funnelstream keys: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        from funnelstream.cluster_schema import statements_of

        ch = ClickHouse(settings.resolved_clickhouse_dsn())
        migrate(ch, statements_of(settings.clickhouse_cluster))
        store.reload_sync(ch)
    except (ClickHouseUnavailable, ClickHouseQueryError) as exc:
        print(
            f"funnelstream keys: cannot open ClickHouse: {exc}\n(the embedded engine opens in "
            "one process at a time: while `funnelstream serve` runs on this data directory, "
            "use the admin API, POST/GET/DELETE /v1/keys)",
            file=sys.stderr,
        )
        return 3
    try:
        if args.keys_command == "create":
            if args.project not in {p.id for p in store.config.projects}:
                print(f"funnelstream keys: unknown project {args.project!r}", file=sys.stderr)
                return 2
            new = store.create_sync(ch, args.project, args.scope, args.label)
            print(f"key_id: {new.key_id}", file=sys.stderr)
            print("the key (shown only now; store it):", file=sys.stderr)
            print(new.plaintext)
            return 0
        if args.keys_command == "list":
            print(f"{'KEY_ID':<26} {'PROJECT':<16} {'SCOPE':<6} {'SOURCE':<7} REVOKED  LABEL")
            for r in store.records(args.project):
                revoked = r.revoked_at.strftime("%Y-%m-%d") if r.revoked_at else "-"
                print(
                    f"{r.key_id:<26} {r.project_id:<16} {r.scope:<6} {r.source:<7} "
                    f"{revoked:<8} {r.label}"
                )
            return 0
        if any(r.key_id == args.key_id and r.source == "config" for r in store.records()):
            print("funnelstream keys: a config file key is removed in the file", file=sys.stderr)
            return 2
        record = store.revoke_sync(ch, args.key_id)
        if record is None:
            print(f"funnelstream keys: no stored key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {record.key_id} ({record.project_id}, {record.scope})")
        return 0
    finally:
        ch.close()


def _server_args(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--config", help="TOML file with [[projects]] and [[funnels]]")
    p.add_argument("--log-backend", dest="log_backend", choices=["embedded", "kafka"])
    p.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    p.add_argument("--clickhouse-dsn", dest="clickhouse_dsn")
    p.add_argument("--log-level", dest="log_level", default="warning")
    _log_format_arg(p)


def _log_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        dest="log_format",
        choices=["json", "text"],
        help="log lines as JSON objects (services' default) or text (FUNNELSTREAM_LOG_FORMAT)",
    )


def _setup_logging(args: argparse.Namespace, service: bool) -> None:
    """One log setup for every command (funnelstream/logs.py): the flag, else
    FUNNELSTREAM_LOG_FORMAT, else JSON for services and text for the command-line tools.
    A service's choice is put in the environment, so `serve`'s ingest process logs alike."""
    chosen = getattr(args, "log_format", None)
    try:
        fmt: LogFormat = chosen or LogSettings().log_format or ("json" if service else "text")
    except ValueError as exc:
        fmt = "text"
        logs.configure(fmt)
        logging.getLogger(__name__).error("configuration error: %s", exc)
        raise SystemExit(2) from exc
    if service:
        os.environ["FUNNELSTREAM_LOG_FORMAT"] = fmt
    logs.configure(fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="funnelstream")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="ingest, processor and query API on one port (two processes)"
    )
    _server_args(serve, 8080)
    serve.add_argument("--demo", action="store_true", help="send demo traffic, print a funnel")
    parts = {}
    for name, port in (("ingest", 8081), ("process", 8082), ("query-api", 8083)):
        parts[name] = sub.add_parser(name, help=f"run only the {name} part")
        _server_args(parts[name], port)
    parts["process"].add_argument(
        "--with-query-api",
        dest="with_query_api",
        action="store_true",
        help="answer the query API in this process too (the embedded engine opens in one "
        "process: docs/scaling.md)",
    )
    # Started by `serve` only (funnelstream/ingest_process.py), on the socket it bound.
    serve_ingest = sub.add_parser("serve-ingest", help="(started by serve; not by hand)")
    serve_ingest.add_argument("--fd", type=int, required=True)
    serve_ingest.add_argument("--owner", required=True)
    serve_ingest.add_argument("--parent", type=int, required=True)
    serve_ingest.add_argument("--log-level", dest="log_level", default="warning")
    _log_format_arg(serve_ingest)
    imp = sub.add_parser(
        "import",
        help="send a CSV or NDJSON history file (optionally .gz) through ingest",
        description=(
            "Stream a history file through ingest, like live traffic: CSV whose header "
            "names event, visitor_id, timestamp and optionally event_id, user_id, "
            "session_id, properties (a JSON object) and properties.NAME columns, or NDJSON "
            "with the same fields; .gz is read as gzip. Timestamps: ISO 8601 (offsets, Z, "
            "fractions, date only; no zone = UTC) or epoch numbers (below 1e11 seconds, "
            "else milliseconds). Lines without event_id get one derived from their line "
            "number and content, so rerunning the same file stores nothing twice. Bad lines "
            "are listed on stderr by line number and skipped."
        ),
        epilog=(
            "exit codes: 0 all lines stored; 1 some lines were bad; 2 file unreadable or "
            "bad arguments; 3 stopped because a batch could not be delivered (rerun to resume)"
        ),
    )
    imp.add_argument("file", help="a .csv, .ndjson or .jsonl file, optionally .gz")
    imp.add_argument("--host", default="http://127.0.0.1:8080", help="ingest base URL")
    imp.add_argument("--write-key", required=True, help="the project's write key")
    imp.add_argument("--format", choices=["csv", "ndjson"], help="default: from the file name")
    imp.add_argument(
        "--concurrency", type=int, default=4, help="requests in flight at once (default 4)"
    )
    imp.add_argument(
        "--batch-size", type=int, default=500, help="events per request, 1-1000 (default 500)"
    )
    imp.add_argument(
        "--give-up-after",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="keep retrying a batch on 429/503/connection errors this long (default 600)",
    )
    imp.add_argument(
        "--quiet", action="store_true", help="no periodic progress (bad lines still shown)"
    )
    erase = sub.add_parser(
        "erase",
        help="erase one visitor or one user (every event, session, state, identity)",
        epilog="exit codes: 0 recorded; 1 refused (the answer is shown); 2 bad arguments; "
        "3 the server did not answer",
    )
    erase.add_argument("--host", default="http://127.0.0.1:8080", help="query API base URL")
    erase.add_argument(
        "--admin-key", dest="admin_key", help="the project's admin key (or FUNNELSTREAM_ADMIN_KEY)"
    )
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--visitor", help="a visitor id")
    who.add_argument("--user", help="a user id: every visitor that sent it or counts for it")
    mig = sub.add_parser("migrate", help="apply ClickHouse migrations")
    mig.add_argument("--data-dir", dest="data_dir")
    mig.add_argument("--clickhouse-dsn", dest="clickhouse_dsn")
    mig.add_argument(
        "--cluster",
        dest="clickhouse_cluster",
        help="a ClickHouse cluster: replicated tables ON CLUSTER, a Distributed one over each",
    )
    mig.add_argument(
        "--print", action="store_true", help="print the cluster's DDL instead of applying it"
    )
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (stored hashed in ClickHouse)",
        description=(
            "Keys are stored hashed in ClickHouse; every process reloads them every "
            "FUNNELSTREAM_KEY_REFRESH_SECONDS (default 5), so a revoked key is refused "
            "everywhere within that. With the embedded engine, run these while the server "
            "is stopped, or use the admin API (/v1/keys)."
        ),
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    k_create = keys_sub.add_parser("create", help="create a key; it is printed once")
    k_create.add_argument("--project", required=True)
    k_create.add_argument("--scope", required=True, choices=["write", "read", "admin"])
    k_create.add_argument("--label", default="", help="what the key is for")
    k_list = keys_sub.add_parser("list", help="keys with their ids, scopes and labels")
    k_list.add_argument("--project")
    k_revoke = keys_sub.add_parser("revoke", help="revoke a stored key by its id")
    k_revoke.add_argument("key_id")
    for k in (k_create, k_list, k_revoke):
        k.add_argument("--data-dir", dest="data_dir")
        k.add_argument("--config", help="TOML file with [[projects]]")
        k.add_argument("--clickhouse-dsn", dest="clickhouse_dsn")
    args = parser.parse_args(argv)
    _setup_logging(args, service=args.command in SERVICES)
    roles = {
        "serve": frozenset({"ingest", "processor", "query"}),
        "ingest": frozenset({"ingest"}),
        "process": frozenset({"processor"}),
        "query-api": frozenset({"query"}),
    }
    if args.command in roles:
        if getattr(args, "with_query_api", False):
            return _run_server(args, roles["process"] | roles["query-api"])
        return _run_server(args, roles[args.command])
    if args.command == "serve-ingest":
        return _run_serve_ingest(args)
    if args.command == "import":
        return _import(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "erase":
        return _erase(args)
    return _migrate(args)


if __name__ == "__main__":
    sys.exit(main())
