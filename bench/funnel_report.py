"""Benchmark: the funnel report SQL vs ClickHouse's bare `windowFunnel` on the same data.

Generates N events for V visitors over 5 funnel steps (plus noise events) inside the
embedded engine with `INSERT ... SELECT FROM numbers()` (no Python in the data path),
then times each query `--runs` times and reports medians. Writes a Markdown summary.

    python bench/funnel_report.py --events 10000000 --visitors 1000000 --runs 5

Data is kept in `--path` and reused when it already holds the requested size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from funnelstream.clickhouse import ClickHouse, migrate
from query_api.sql.funnel_report import levels_sql, report_sql
from schemas.funnels import FunnelDefinition

PROJECT = "bench"
START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2025, 2, 1, tzinfo=UTC)
STEPS = ("view", "product", "cart", "checkout", "purchase")

FUNNEL = FunnelDefinition.model_validate(
    {
        "id": "bench",
        "project": PROJECT,
        "window_seconds": 24 * 3600,
        "steps": [{"event": e} for e in STEPS],
    }
)

# Each visitor's events are spread over ~2 days from a random start within January;
# event names are drawn with decreasing weight toward the end of the funnel, plus noise.
GENERATE = """
INSERT INTO events (project_id, event_id, event, visitor_id, user_id, client_session_id,
                    timestamp, received_at, properties, context, log_partition, log_offset)
SELECT
    'bench',
    generateUUIDv4(number),
    arrayElement(['view', 'view', 'view', 'product', 'product', 'cart', 'checkout',
                  'purchase', 'scroll', 'click'], 1 + (cityHash64(number, 1) % 10)),
    concat('v', toString(number % {visitors:UInt64})),
    '',
    '',
    toDateTime64('2025-01-01 00:00:00', 3, 'UTC')
        + toIntervalMillisecond(cityHash64(number % {visitors:UInt64}) % (28 * 86400000)
                                + cityHash64(number, 2) % (2 * 86400000)) AS ts,
    ts,
    map('plan', arrayElement(['free', 'pro', 'team'], 1 + cityHash64(number, 3) % 3)),
    map(),
    0,
    number
FROM numbers({events:UInt64})
"""


def timed(ch: ClickHouse, sql: str, params: dict[str, object], runs: int) -> list[float]:
    ch.query_rows_sync(sql, params)  # warm-up: page cache, compiled expressions
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        ch.query_rows_sync(sql, params)
        out.append(time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--visitors", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--path", default="/tmp/funnelstream-bench")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "funnel_report.md"))
    args = ap.parse_args(argv)

    ch = ClickHouse(f"chdb://{args.path}")
    migrate(ch)
    (have,) = ch.query_rows_sync("SELECT count() FROM events WHERE project_id = 'bench'")[0]
    generate_s = 0.0
    if have != args.events:
        ch.command_sync("TRUNCATE TABLE events")
        started = time.perf_counter()
        ch.command_sync(GENERATE, {"events": args.events, "visitors": args.visitors})
        ch.command_sync("OPTIMIZE TABLE events FINAL")
        generate_s = time.perf_counter() - started
        print(f"generated {args.events:,} events in {generate_s:.1f} s", file=sys.stderr)

    report, report_params = report_sql(FUNNEL, PROJECT, START, END)
    levels, levels_params = levels_sql(FUNNEL, PROJECT, START, END)
    bare = f"SELECT level, count() FROM ({levels}) GROUP BY level ORDER BY level"
    results = {
        "report (arrayFold per visitor, counts + times)": timed(
            ch, report, report_params, args.runs
        ),
        "bare windowFunnel (levels only)": timed(ch, bare, levels_params, args.runs),
    }
    rows = ch.query_rows_sync(report, report_params)
    ch.close()

    medians = {name: statistics.median(t) for name, t in results.items()}
    report_median, bare_median = medians.values()
    command = "python bench/funnel_report.py " + " ".join(
        f"--{k} {getattr(args, k)}" for k in ("events", "visitors", "runs")
    )
    lines = [
        "# Funnel report benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {_cpus()} cores, Python {platform.python_version()}, "
        "chdb (embedded ClickHouse). "
        f"Data: {args.events:,} events, {args.visitors:,} visitors, 5-step funnel, 1-day window.",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; median of {args.runs} runs after "
        "one warm-up.",
        "",
        "| query | median s | runs (s) |",
        "|---|---|---|",
    ]
    for name, times in results.items():
        runs = ", ".join(f"{t:.3f}" for t in times)
        lines.append(f"| {name} | {medians[name]:.3f} | {runs} |")
    lines += [
        "",
        f"Ratio report / windowFunnel: {report_median / bare_median:.2f}x",
        "",
        "Report rows (step, entities, median/p90/avg ms from start, median/p90/avg ms from "
        "previous step, in progress): " + "; ".join(str(tuple(r)) for r in rows),
    ]
    load = os.getloadavg()[0]
    lines += ["", f"Load average (1 min) when finished: {load:.2f} on {_cpus()} cores."]
    if generate_s:
        lines += ["", f"Data generation (INSERT SELECT + OPTIMIZE): {generate_s:.1f} s"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
