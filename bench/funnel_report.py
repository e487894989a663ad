"""Benchmark: the funnel report SQL vs ClickHouse's bare `windowFunnel` on the same data.

Generates N events for V visitors over 5 funnel steps (plus noise events) inside the
embedded engine with `INSERT ... SELECT FROM numbers()` (no Python in the data path),
then times each query `--runs` times and reports medians. Writes a Markdown summary.

    python bench/funnel_report.py --events 10000000 --visitors 1000000 --runs 5

Data is kept in `--path` and reused when it already holds the requested numbers of events
and visitors (keep one path per size to iterate on a smaller data set).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from funnel.compiled import compile_funnel
from funnel.sql.report import levels_sql, report_sql
from funnelstream.clickhouse import ClickHouse, migrate
from schemas.funnels import Exclusion, FunnelDefinition

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

REPORT = "report (level passes: counts, times, in progress)"
BARE = "bare windowFunnel (levels only)"
# Funnel shapes that take the slower evaluations (funnel/sql/report.py).
VARIANTS = {
    "report, a step event repeated (passes, entries sorted with event ids)": FUNNEL.model_copy(
        update={"steps": (*FUNNEL.steps[:4], FUNNEL.steps[0])}
    ),
    "report, with an exclusion (arrayFold)": FUNNEL.model_copy(
        update={"exclusions": (Exclusion(event="scroll", from_step=1, to_step=2),)}
    ),
}

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


Query = tuple[str, dict[str, object]]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(
    ch: ClickHouse, queries: dict[str, Query], runs: int
) -> dict[str, tuple[list[float], list[float]]]:
    """(wall s, CPU s) per run of each query. Runs are interleaved (report, baseline,
    report, ...) so that load from other processes hits every query alike."""
    for sql, params in queries.values():
        ch.query_rows_sync(sql, params)  # warm-up: page cache, compiled expressions
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in queries}
    for _ in range(runs):
        for name, (sql, params) in queries.items():
            started, cpu = time.perf_counter(), _cpu_seconds()
            ch.query_rows_sync(sql, params)
            out[name][0].append(time.perf_counter() - started)
            out[name][1].append(_cpu_seconds() - cpu)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--visitors", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--path", default="/tmp/funnelstream-bench")
    ap.add_argument(
        "--variants", action="store_true", help="also time the slower funnel shapes (VARIANTS)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "funnel_report.md"))
    args = ap.parse_args(argv)

    ch = ClickHouse(f"chdb://{args.path}")
    migrate(ch)
    have = ch.query_rows_sync(
        "SELECT count(), uniqExact(visitor_id) FROM events WHERE project_id = 'bench'"
    )[0]
    generate_s = 0.0
    if have != (args.events, args.visitors):
        ch.command_sync("TRUNCATE TABLE events")
        started = time.perf_counter()
        ch.command_sync(GENERATE, {"events": args.events, "visitors": args.visitors})
        ch.command_sync("OPTIMIZE TABLE events FINAL")
        generate_s = time.perf_counter() - started
        print(f"generated {args.events:,} events in {generate_s:.1f} s", file=sys.stderr)

    report, report_params = report_sql(compile_funnel(FUNNEL), PROJECT, START, END)
    levels, levels_params = levels_sql(compile_funnel(FUNNEL), PROJECT, START, END)
    queries: dict[str, Query] = {
        REPORT: (report, report_params),
        BARE: (
            f"SELECT level, count() FROM ({levels}) GROUP BY level ORDER BY level",
            levels_params,
        ),
    }
    if args.variants:
        for name, funnel in VARIANTS.items():
            queries[name] = report_sql(compile_funnel(funnel), PROJECT, START, END)
    results = timed(ch, queries, args.runs)
    rows = ch.query_rows_sync(report, report_params)
    bare_levels = ch.query_rows_sync(*queries[BARE])
    ch.close()

    wall = {name: statistics.median(w) for name, (w, _) in results.items()}
    cpu = {name: statistics.median(c) for name, (_, c) in results.items()}
    command = "python bench/funnel_report.py " + " ".join(
        f"--{k} {getattr(args, k)}" for k in ("events", "visitors", "runs")
    )
    if args.variants:
        command += " --variants"
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
        "one warm-up, runs of the queries interleaved. CPU = user + system seconds of the "
        "process during the query (less sensitive to other load than wall time).",
        "",
        "| query | median wall s | median CPU s | wall runs (s) |",
        "|---|---|---|---|",
    ]
    for name, (walls, _) in results.items():
        runs = ", ".join(f"{t:.3f}" for t in walls)
        lines.append(f"| {name} | {wall[name]:.3f} | {cpu[name]:.3f} | {runs} |")
    lines += [
        "",
        f"Ratio report / windowFunnel: {wall[REPORT] / wall[BARE]:.2f}x wall, "
        f"{cpu[REPORT] / cpu[BARE]:.2f}x CPU",
        "",
        "Report rows (step, entities, median/p90/avg ms from start, median/p90/avg ms from "
        "previous step, in progress): " + "; ".join(str(tuple(r)) for r in rows),
        "",
        "windowFunnel levels (level, visitors): " + ", ".join(str(tuple(r)) for r in bare_levels),
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
