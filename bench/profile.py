"""Where ingest and the processor spend their time: py-spy samples, summarised.

    python bench/profile.py --seconds 10

py-spy (`pip install py-spy`; not a project dependency) samples, at 100 Hz, without
line numbers so a function is one entry:

ingest   the `funnelstream ingest` process (embedded log) while clients send it one of
         bench/throughput.py's loads (`--ingest-load`, 100-event gzip batches unless told)
fold     a process folding storefront messages (decode → apply, 3 funnels, 5% late)
         over and over (`bench/throughput.py --part fold-loop`)
full     `bench/throughput.py --part full-once`: the real processor writing into the
         embedded ClickHouse, from start to end (setup included, so read its entries
         under `Processor.run`)

For each: the top functions by self time (the sample's innermost frame) and by
cumulative time (anywhere on the stack), and self time per package, as shares of the
samples in which a thread was busy (idle threads are not sampled). Writes
bench/results/profile_data.md; bench/results/profile.md says what it means.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import (  # noqa: E402
    LOADS,
    client_events,
    hammer,
    http_requests,
    ingest_server,
    run_client,
)

TOP = 20
# Innermost frames of a thread blocked in C (a pool worker waiting for work, a condition,
# the selector): py-spy cannot always tell them idle. Counted apart as waiting.
WAITING = ("Condition.wait (", "_worker (concurrent/", "EpollSelector.select (")
# Frames on every stack (interpreter start, the event loop, thread start): left out of
# the cumulative table, which is about what the work is.
OURS = ("ingest", "processor", "funnel", "schemas", "funnelstream", "query_api")
FRAMEWORK = ("runpy", "<frozen runpy>", "asyncio", "threading", "<module>", "main")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def record_pid(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "100",
            "--nolineno",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def short(frame: str) -> tuple[str, str]:
    """(function with its file made short, the package it belongs to)."""
    match = FRAME.match(frame)
    if match is None:
        return frame, frame
    path = match["file"]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(str(ROOT)):
        path = path[len(str(ROOT)) + 1 :]
    elif "/lib/python3" in path:
        path = "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    package = path.split("/", 1)[0] if "/" in path else path
    return f"{match['func']} ({path})", package.removesuffix(".py")


def summarise(raw: Path, title: str) -> str:
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")]
        if frames[-1][0].startswith(WAITING):
            waiting += n
            continue
        total += n
        own[frames[-1][0]] += n
        packages[frames[-1][1]] += n
        for name in {f[0] for f in frames if f[1] not in FRAMEWORK}:
            if not name.startswith(("main (", "<module> (")):
                cumulative[name] += n
        for name in {f[0] for f in frames if f[1] in OURS}:
            ours[name] += n
    if total == 0:
        return f"## {title}\n\nno samples\n"

    def table(counter: Counter[str], head: str, limit: int = TOP) -> list[str]:
        rows = [f"| {head} | share |", "|---|---:|"]
        rows += [f"| `{k}` | {v / total:.1%} |" for k, v in counter.most_common(limit)]
        return rows

    return "\n".join(
        [
            f"## {title}",
            "",
            f"{total} busy samples (shares below are of these); {waiting} more samples "
            "were threads blocked waiting (a pool worker or condition), left out.",
            "",
            "Self time by package:",
            "",
            *table(packages, "package", 15),
            "",
            "Top self time:",
            "",
            *table(own, "function"),
            "",
            "Top cumulative time:",
            "",
            *table(cumulative, "function", 30),
            "",
            "Top cumulative time, this project's code only:",
            "",
            *table(ours, "function", 30),
            "",
        ]
    )


def profile_ingest(seconds: float, out: Path, load_name: str) -> None:
    load = next(x for x in LOADS if x.name == load_name)
    requests = http_requests(load, client_events(50_000))
    with tempfile.TemporaryDirectory() as tmp, ingest_server(Path(tmp)) as server:
        run_client(hammer(server.port, requests, load.clients, 0.5))
        assert server.proc is not None
        spy = record_pid(server.proc.pid, seconds, out)
        result = run_client(hammer(server.port, requests, load.clients, seconds + 1))
        spy.wait(60)
    rate = result["rps"] * load.events_per_request
    print(f"ingest under profile: {rate:,.0f} ev/s", flush=True)


def profile_fold(seconds: float, events: int, out: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--part", "fold-loop"]
        + ["--events", str(events)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()  # "ready": the messages are built
        record_pid(child.pid, seconds, out).wait(60)
    finally:
        child.terminate()
        child.wait(20)


def profile_full(events: int, out: Path) -> None:
    subprocess.run(
        [py_spy(), "record", "--rate", "100", "--nolineno", "--format", "raw", "--output"]
        + [str(out), "--", sys.executable, str(ROOT / "bench" / "throughput.py")]
        + ["--part", "full-once", "--full-events", str(events)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--full-events", type=int, default=20_000)
    parser.add_argument("--parts", default="ingest,fold,full")
    parser.add_argument(
        "--ingest-load", default="100-event batches, gzip", choices=[x.name for x in LOADS]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile_data.md")
    args = parser.parse_args()
    parts = args.parts.split(",")
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        if "ingest" in parts:
            profile_ingest(args.seconds, raw / "ingest.txt", args.ingest_load)
            title = f"ingest under load: {args.ingest_load}"
            sections.append(summarise(raw / "ingest.txt", title))
        if "fold" in parts:
            profile_fold(args.seconds, args.events, raw / "fold.txt")
            sections.append(summarise(raw / "fold.txt", "fold (decode + apply), no I/O"))
        if "full" in parts:
            profile_full(args.full_events, raw / "full.txt")
            sections.append(summarise(raw / "full.txt", "processor, full (setup included)"))
    head = (
        "# Profile data (py-spy)\n\n"
        f"Command: `python bench/profile.py --seconds {args.seconds:g} --events {args.events} "
        f"--full-events {args.full_events} --parts {args.parts} "
        f"--ingest-load '{args.ingest_load}'`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "Shares of busy samples (100 Hz, every thread).\n\n"
    )
    args.out.write_text(head + "\n".join(sections))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
