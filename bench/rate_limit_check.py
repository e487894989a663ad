"""What one rate-limit check costs the request path (funnelstream/ratelimit.py).

One `Limiter.hit` per request (never per event), against a limit that never refuses, with
`live` client addresses holding a bucket each (the library's expiry thread scans them all
every 10 ms while requests arrive, so the cost grows with them). Median of `--runs`.

    python bench/rate_limit_check.py --hits 200000 --runs 3

Writes bench/results/rate_limit_check.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnelstream.ratelimit import Limiter, RateLimit  # noqa: E402

LIVE = (1_000, 10_000, 100_000)


def per_hit_us(live: int, hits: int) -> float:
    limiter = Limiter()
    limit = RateLimit.from_setting("bench", "100000000/minute")
    addresses = [f"198.51.{i // 250}.{i % 250}" for i in range(live)]
    for address in addresses:
        limiter.hit(limit, address, "ingest")
    started = time.perf_counter()
    for i in range(hits):
        limiter.hit(limit, addresses[i % live], "ingest")
    return (time.perf_counter() - started) / hits * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for live in LIVE:
        runs = [per_hit_us(live, args.hits) for _ in range(args.runs)]
        rows.append((live, statistics.median(runs), runs))
    out = [
        "# Rate-limit check cost",
        "",
        f"Command: `python bench/rate_limit_check.py --hits {args.hits} --runs {args.runs}`",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}; median of "
        f"{args.runs} runs of {args.hits:,} checks, one per request.",
        "",
        "| live buckets | µs per check | checks/s on one core |",
        "|---:|---:|---:|",
        *(f"| {live:,} | {us:.1f} | {1e6 / us:,.0f} |" for live, us, _ in rows),
        "",
        "Per run (µs): "
        + "; ".join(f"{live:,}: {[round(r, 1) for r in runs]}" for live, _, runs in rows),
        "",
    ]
    path = Path(__file__).parent / "results" / "rate_limit_check.md"
    path.write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
