"""What rebuilding users costs as the events table grows: the two reads of one rebuild
(the touched users' visitors, then those visitors' events; processor/user_funnels.py)
against an embedded engine holding `--events` stored events over 30 days (five per
visitor, a third of the visitors identified, about one per user), next to the same reads
in a project with a tenth of the events: how the cost grows with the table.

    python bench/user_rebuild_reads.py --events 3000000 --runs 5

Writes bench/results/user_rebuild_reads.md (medians per number of users touched).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funnelstream.clickhouse import ClickHouse, migrate  # noqa: E402
from processor.user_funnels import USER_EVENTS_SQL, VISITORS_SQL  # noqa: E402

NAMES = ["page_view", "product_view", "add_to_cart"]


def fill(ch: ClickHouse, project: str, events: int) -> None:
    visitors, users = events // 5, events // 15
    ch.command_sync(
        "INSERT INTO events (project_id, event_id, event, visitor_id, user_id, "
        "client_session_id, timestamp, received_at, properties, context, log_partition, "
        "log_offset) "
        f"SELECT '{project}', generateUUIDv4(), ['page_view', 'product_view', 'add_to_cart', "
        "'search'][1 + number % 4], concat('v', toString(intDiv(number, 5))), '', '', "
        "now64(3) - toIntervalSecond(number % 2592000), now64(3), map(), map(), number % 8, "
        f"number FROM numbers({events})"
    )
    ch.command_sync(
        f"INSERT INTO visitor_identities SELECT '{project}', "
        f"concat('u', toString(intDiv(number, 3) % {users})), concat('v', toString(number)), "
        f"now64(3), 0 FROM numbers({visitors}) WHERE number % 3 = 0"
    )


def rebuild_reads(ch: ClickHouse, project: str, users: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    members = ch.query_rows_sync(VISITORS_SQL, {"project": project, "users": users})
    visitors = sorted({str(v) for _, v in members})
    rows = ch.query_rows_sync(
        USER_EVENTS_SQL, {"project": project, "visitors": visitors, "events": NAMES}
    )
    return time.perf_counter() - started, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    lines = []
    with tempfile.TemporaryDirectory() as d:
        ch = ClickHouse(f"chdb://{d}")
        migrate(ch)
        # The baseline: a project with a tenth of the events, same engine, same run.
        fill(ch, "big", args.events)
        fill(ch, "small", args.events // 10)
        for touched in (10, 100, 1000):
            medians = []
            for project, events in (("big", args.events), ("small", args.events // 10)):
                pool = events // 15
                runs = [
                    rebuild_reads(ch, project, [f"u{rng.randrange(pool)}" for _ in range(touched)])
                    for _ in range(args.runs)
                ]
                medians.append(
                    (
                        statistics.median(r[0] for r in runs) * 1000,
                        statistics.median(r[1] for r in runs),
                    )
                )
            (big_ms, rows), (small_ms, _) = medians
            lines.append(
                f"| {touched} | {rows:,.0f} | {big_ms:.1f} | {small_ms:.1f} |"
                f" {big_ms / small_ms:.2f} |"
            )
        ch.close()
    table = "\n".join(
        [
            f"Command: `python bench/user_rebuild_reads.py --events {args.events} "
            f"--runs {args.runs}`",
            "",
            f"{args.events:,} stored events of one project over 30 days, five per visitor; the"
            f" baseline, in the same engine and run, a project with {args.events // 10:,}."
            f" Median of {args.runs} rebuilds per cell, each of other random users. 2 cores.",
            "",
            "| users touched by a batch | events read | reads, median ms | baseline (1/10 of the"
            " events) ms | ratio |",
            "|---:|---:|---:|---:|---:|",
            *lines,
        ]
    )
    print(table)
    out = Path(__file__).parent / "results" / "user_rebuild_reads.md"
    out.write_text("# Rebuilding users: read cost against a large events table\n\n" + table + "\n")


if __name__ == "__main__":
    main()
