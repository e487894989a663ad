"""CPU time of `funnelstream ingest` per event, for A/B comparisons on a busy machine.

Events/s move with whatever else the machine runs; the ingest process's own CPU time
(utime + stime from /proc) per acknowledged event moves much less. Run it from each
checkout to compare, alternately, a few times:

    (cd A && python bench/ingest_cpu.py) ; (cd B && python bench/ingest_cpu.py) ; ...

It uses the loads and clients of bench/throughput.py (`--load` is an index into
`LOADS`: 3 = 500-event gzip batches, 4 clients) and prints µs of server CPU per event
for each measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

import throughput  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    load = throughput.LOADS[args.load]
    requests = throughput.http_requests(load, throughput.client_events(50_000))
    per_event = []
    with tempfile.TemporaryDirectory() as tmp, throughput.ingest_server(Path(tmp)) as server:
        assert server.proc is not None
        pid = server.proc.pid
        throughput.measure_http(server.port, requests, load.clients, 1.0)  # warm up
        for _ in range(args.runs):
            before = cpu_seconds(pid)
            result = throughput.measure_http(server.port, requests, load.clients, args.seconds)
            events = result["rps"] * args.seconds * load.events_per_request
            per_event.append((cpu_seconds(pid) - before) / events * 1e6)
    shown = ", ".join(f"{v:.2f}" for v in per_event)
    print(f"{Path.cwd().name}: {load.name}: ingest CPU µs/event {shown}")


if __name__ == "__main__":
    main()
