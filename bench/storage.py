"""ClickHouse storage per event: what the processor's tables hold on disk after a storefront
day, for sizing a ClickHouse server (docs/operations.md, "Capacity").

Sends the demo storefront's traffic (funnelstream/demo.py: 5-step checkout, a few
properties per event) through a `funnelstream serve` app on the embedded engine with the
config's checkout funnel, waits until it is processed, merges every table (OPTIMIZE FINAL,
as background merges would over time) and reads `system.parts`: rows, compressed and
uncompressed bytes per table, and bytes per stored event.

    python bench/storage.py --visitors 20000

Prints a markdown table and writes it to bench/results/storage.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from funnelstream.app import build_app
from funnelstream.config import IngestSettings, ProcessorSettings
from funnelstream.demo import storefront

CONFIG = """
[[projects]]
id = "demo"
write_key = "wk_bench_storage"
read_key = "rk_bench_storage"
admin_key = "ak_bench_storage"

[[funnels]]
id = "checkout"
project = "demo"
window_seconds = 86400
steps = [{event = "page_view"}, {event = "product_view"}, {event = "add_to_cart"},
         {event = "checkout_started"}, {event = "purchase"}]
"""

PARTS = """
SELECT table, sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes)
FROM system.parts WHERE active AND database = currentDatabase()
GROUP BY table ORDER BY sum(data_compressed_bytes) DESC
"""


def measure(visitors: int) -> tuple[int, list[tuple[str, int, int, int]]]:
    with tempfile.TemporaryDirectory(prefix="fs-storage-") as tmp:
        return _measure(Path(tmp), visitors)


def _measure(data: Path, visitors: int) -> tuple[int, list[tuple[str, int, int, int]]]:
    (data / "c.toml").write_text(CONFIG)
    common: dict[str, object] = {"data_dir": data, "config_file": data / "c.toml"}
    app = build_app(IngestSettings(**common), ProcessorSettings(**common))  # type: ignore[arg-type]
    traffic = storefront(visitors, int(time.time() * 1000) - 86_400_000)
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer wk_bench_storage"}
        for i in range(0, len(traffic.events), 500):
            r = client.post("/v1/events", json={"batch": traffic.events[i : i + 500]}, headers=auth)
            assert r.status_code == 202, r.text
        while client.get("/healthz").json().get("lag") != 0:
            time.sleep(0.2)
        ch = app.state.clickhouse
        for (table,) in ch.query_rows_sync(
            "SELECT name FROM system.tables WHERE database = currentDatabase() "
            "AND engine LIKE '%MergeTree'"
        ):
            ch.command_sync(f"OPTIMIZE TABLE {table} FINAL")
        rows = [(str(t), int(r), int(c), int(u)) for t, r, c, u in ch.query_rows_sync(PARTS)]
    return len(traffic.events), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=20000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "storage.md"))
    args = parser.parse_args()
    events, rows = measure(args.visitors)
    compressed = sum(r[2] for r in rows)
    uncompressed = sum(r[3] for r in rows)
    lines = [
        "# ClickHouse storage per event",
        "",
        f"Command: `python bench/storage.py --visitors {args.visitors}`",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{platform.python_version()}, embedded engine (chdb), tables merged (OPTIMIZE FINAL). "
        f"{events:,} events from {args.visitors:,} demo storefront visitors, one 5-step funnel.",
        "",
        "| table | rows | compressed bytes | uncompressed bytes |",
        "|---|---:|---:|---:|",
        *(f"| {t} | {r:,} | {c:,} | {u:,} |" for t, r, c, u in rows),
        f"| **all** | | **{compressed:,}** | **{uncompressed:,}** |",
        "",
        f"Per stored event, every table: {compressed / events:.0f} B compressed, "
        f"{uncompressed / events:.0f} B uncompressed.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
