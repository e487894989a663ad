"""Benchmark: `GET /v1/funnels/{id}/live` latency (stage counts + recent transitions).

Fills the processor's state tables inside the embedded engine with `INSERT ... SELECT FROM
numbers()`: V visitors of one 5-step funnel in `funnel_state` (a fifth of them with a
second, newer version, as before a background merge) and one `funnel_transitions` row per
step each visitor reached, spread over 30 days, plus the same again for 4 other funnels
(rows the query must skip). Then requests the route through the ASGI app and reports
latency percentiles. Writes a Markdown summary.

    python bench/live_stages.py --visitors 1000000 --requests 300
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

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnelstream.clickhouse import ClickHouse, migrate  # noqa: E402
from funnelstream.config import Project, ProjectConfig  # noqa: E402
from processor.catalog import FunnelCatalog  # noqa: E402
from query_api.routes.live import router as live_router  # noqa: E402
from schemas.funnels import FunnelDefinition  # noqa: E402

FUNNELS = ("live0", "live1", "live2", "live3", "live4")

# level: 1..5 with decreasing weight; a fifth of the visitors get an older version too.
STATE = """
INSERT INTO funnel_state (project_id, funnel_id, visitor_id, level, step_started_at,
                          step_reached_at, updated_at, version)
SELECT 'bench', {funnel:String}, concat('v', toString(number % {visitors:UInt64})),
       if(number < {visitors:UInt64},
          [1, 1, 1, 2, 2, 2, 3, 3, 4, 5][1 + cityHash64(number) % 10], 1),
       [now64(3), now64(3), now64(3), now64(3), now64(3)],
       [now64(3), now64(3), now64(3), now64(3), now64(3)],
       now64(3), if(number < {visitors:UInt64}, 2, 1)
FROM numbers({visitors:UInt64} + intDiv({visitors:UInt64}, 5))
"""
TRANSITIONS = """
INSERT INTO funnel_transitions
SELECT 'bench', {funnel:String}, concat('v', toString(number)), step,
       now64(3) - toIntervalMillisecond(cityHash64(number, step) % (30 * 86400000)) AS t,
       t, generateUUIDv4(number), t
FROM numbers({visitors:UInt64})
ARRAY JOIN range(1, 1 + [1, 1, 1, 2, 2, 2, 3, 3, 4, 5][1 + cityHash64(number) % 10]) AS step
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visitors", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--minutes", type=int, default=15)
    ap.add_argument("--path", default="/tmp/funnelstream-bench-live")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "live_stages.md"))
    args = ap.parse_args(argv)

    ch = ClickHouse(f"chdb://{args.path}")
    migrate(ch)
    ((have,),) = ch.query_rows_sync(
        "SELECT uniqExact(visitor_id) FROM funnel_state WHERE funnel_id = 'live0'"
    )
    if have != args.visitors:
        started = time.perf_counter()
        ch.command_sync("TRUNCATE TABLE funnel_state")
        ch.command_sync("TRUNCATE TABLE funnel_transitions")
        for funnel_id in FUNNELS:
            params = {"funnel": funnel_id, "visitors": args.visitors}
            ch.command_sync(STATE, params)
            ch.command_sync(TRANSITIONS, params)
        print(f"generated in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    ((state_rows,),) = ch.query_rows_sync("SELECT count() FROM funnel_state")
    ((transition_rows,),) = ch.query_rows_sync("SELECT count() FROM funnel_transitions")

    funnel = FunnelDefinition.model_validate(
        {
            "id": "live0",
            "project": "bench",
            "window_seconds": 86400,
            "steps": [{"event": e} for e in ("view", "product", "cart", "checkout", "buy")],
        }
    )
    app = FastAPI()
    app.state.clickhouse = ch
    app.state.catalog = FunnelCatalog([funnel])
    app.state.project_config = ProjectConfig(
        projects=(Project("bench", SecretStr("wk"), SecretStr("rk")),), funnels=()
    )
    app.include_router(live_router)
    results: dict[str, list[float]] = {}
    answers: list[object] = []
    with TestClient(app) as client:
        for label, minutes in (("stages + transitions", args.minutes), ("stages only", 0)):
            url = f"/v1/funnels/live0/live?minutes={minutes}"
            answers.append(client.get(url, headers={"Authorization": "Bearer rk"}).json())
            times = []
            for _ in range(args.requests):
                started = time.perf_counter()
                r = client.get(url, headers={"Authorization": "Bearer rk"})
                times.append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200
            results[f"{label} (minutes={minutes})"] = times
    ch.close()

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]

    lines = [
        "# Live stages benchmark",
        "",
        f"Command: `python bench/live_stages.py --visitors {args.visitors} "
        f"--requests {args.requests} --minutes {args.minutes}`",
        "",
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python "
        f"{platform.python_version()}, chdb (embedded ClickHouse), requests through the "
        "ASGI app (FastAPI TestClient), one at a time.",
        f"Data: {state_rows:,} funnel_state rows ({args.visitors:,} visitors per funnel, "
        f"{len(FUNNELS)} funnels, a fifth written twice; merged or not as background merges "
        "left them), "
        f"{transition_rows:,} funnel_transitions rows.",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "| request | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for label, times in results.items():
        lines.append(
            f"| {label} | {statistics.median(times):.1f} | {pct(times, 0.9):.1f} | "
            f"{pct(times, 0.99):.1f} | {max(times):.1f} |"
        )
    lines += ["", f"Answer (minutes={args.minutes}): {answers[0]}"]
    lines += ["", f"Load average (1 min) when finished: {os.getloadavg()[0]:.2f}."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
