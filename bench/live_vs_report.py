"""Live stages and sessions against the reports, in order and under shuffled concurrent delivery.

One storefront history (visitors coming back for several visits hours or days apart, so
sessions and attempts matter) is imported twice into two fresh `funnelstream serve`
processes with `funnelstream import`: once in timestamp order over 1 connection, once
shuffled (5% of the events moved to the end, days late) over 4 concurrent connections.
Each time, after everything is processed, the live stage counts (`/live`, the processor's
state) are compared with the report over all stored events (`/report`), and the sessions
the processor wrote (`/v1/stats`) with the batch sessionization of the same events.

    python bench/live_vs_report.py --visitors 3000

Writes bench/results/live_vs_report.md.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnelstream.demo import STEPS  # noqa: E402
from processor.sessionize import reference_sessions  # noqa: E402

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_bench_live_vs_report"
read_key = "rk_bench_live_vs_report"

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
READ = {"Authorization": "Bearer rk_bench_live_vs_report"}
GAP_MS = 30 * 60 * 1000
DAY_MS = 86_400_000


def history(visitors: int, start_ms: int, seed: int) -> list[dict[str, Any]]:
    """Each visitor makes 1 to 3 visits, 1 to 40 hours apart, each going some steps deep."""
    rng = random.Random(seed)
    events = []
    for v in range(visitors):
        ts = start_ms + rng.randrange(0, DAY_MS)
        for _ in range(rng.randint(1, 3)):
            depth = 1
            while depth < len(STEPS) and rng.random() < 0.6:
                depth += 1
            for k in range(depth):
                ts += rng.randrange(1_000, 300_000)
                events.append(
                    {
                        "event": STEPS[k],
                        "visitor_id": f"v{v}",
                        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        "timestamp": ts,
                    }
                )
            ts += rng.randrange(3_600_000, 40 * 3_600_000)
    events.sort(key=lambda e: e["timestamp"])
    return events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_once(
    events: list[dict[str, Any]], concurrency: int, workdir: Path, start_ms: int, end_ms: int
) -> dict[str, Any]:
    data = workdir / "data"
    data.mkdir(parents=True)
    config = workdir / "funnelstream.toml"
    config.write_text(CONFIG)
    source = workdir / "events.ndjson"
    source.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "funnelstream.cli", "serve", "--data-dir", str(data)]
        + ["--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "funnelstream.cli", "import", str(source), "--host", base]
            + ["--write-key", "wk_bench_live_vs_report", "--concurrency", str(concurrency)]
            + ["--quiet"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        while True:
            stats = httpx.get(f"{base}/v1/stats", headers=READ, timeout=60).json()
            lag = httpx.get(f"{base}/healthz", timeout=10).json().get("lag")
            if stats["events"] == len(events) and lag == 0:
                break
            if time.monotonic() - started > 900:
                raise RuntimeError(f"not processed: {stats}")
            time.sleep(0.5)
        seconds = time.monotonic() - started
        live = httpx.get(f"{base}/v1/funnels/checkout/live", headers=READ, timeout=60).json()
        window = {"from": str(start_ms), "to": str(end_ms)}
        report = httpx.get(
            f"{base}/v1/funnels/checkout/report", params=window, headers=READ, timeout=60
        ).json()
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    late = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("funnelstream_processor_too_late_events_total ")
    )
    return {
        "seconds": seconds,
        "live": [s["reached"] for s in live["stages"]],
        "report": [s["visitors"] for s in report["steps"]],
        "sessions": stats["sessions"],
        "late": int(late),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("bench/results/live_vs_report.md"))
    args = parser.parse_args()
    now = int(time.time() * 1000)
    start_ms = now - 10 * DAY_MS
    events = history(args.visitors, start_ms, args.seed)
    end_ms = max(e["timestamp"] for e in events) + 1
    by_visitor: dict[str, list[int]] = {}
    for e in events:
        by_visitor.setdefault(e["visitor_id"], []).append(e["timestamp"])
    want_sessions = sum(len(reference_sessions(ts, GAP_MS)) for ts in by_visitor.values())

    rng = random.Random(args.seed)
    shuffled = list(events)
    rng.shuffle(shuffled)
    held_back = [e for e in shuffled if rng.random() < 0.05]
    kept = {e["event_id"] for e in held_back}
    shuffled = [e for e in shuffled if e["event_id"] not in kept] + held_back

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, stream, connections in (
            ("in timestamp order, 1 connection", events, 1),
            ("shuffled, 5% at the end, 4 connections", shuffled, 4),
        ):
            r = run_once(stream, connections, Path(tmp) / str(connections), start_ms, end_ms)
            rows.append((name, r))
            print(name, r, flush=True)

    lines = [
        "# Live stages and sessions against the reports",
        "",
        f"Command: `python bench/live_vs_report.py --visitors {args.visitors}`",
        "",
        f"{len(events):,} events of {args.visitors:,} visitors (1 to 3 visits each, hours "
        f"apart), imported with `funnelstream import` into a fresh `funnelstream serve`. "
        f"Sessions by batch sessionization of the same events: {want_sessions:,}.",
        "",
        "| delivery | live `reached` per step | report `visitors` per step | equal | "
        "sessions stored | late events re-folded | seconds |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for name, r in rows:
        equal = "yes" if r["live"] == r["report"] and r["sessions"] == want_sessions else "NO"
        lines.append(
            f"| {name} | {r['live']} | {r['report']} | {equal} | {r['sessions']:,} | "
            f"{r['late']:,} | {r['seconds']:.1f} |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
