"""Freshness from 202 to live at 70% of the max load, and the server's RSS (issue 13;
`throughput.py --part freshness`).

One run, on a fresh data dir:

1. `funnelstream serve` as serve_run starts it (the `Server` helper, limits off); its
   process tree's RSS 1 s after start (idle).
2. Max processed rate: unless `--fresh-rate` is given, one burst of
   `--fresh-burst-events` events in 500-event gzip batches from 4 clients, sent as fast
   as they are acknowledged: events / (first send → the processor's lag 0).
3. Paced load: 500-event gzip batches at 70% of that rate for `--fresh-seconds`, on a
   fixed schedule (request k is due at start + k × interval, spread over 4 keep-alive
   clients; a request sent late because the server was slow is not made up for).
4. Freshness, two ways:
   histogram  the processor's `funnelstream_processor_freshness_seconds` (ingest
              receiving an event → its batch committed), scraped from /metrics before and
              after the paced load (after: once lag is 0); the difference of the bucket
              counts, quantiles interpolated within a bucket as Prometheus's
              `histogram_quantile` does (bench/kafka_pipeline.py `histogram_quantile`).
   direct     per paced request, from its 202 to the first /metrics scrape whose
              committed offsets (`funnelstream_processor_committed_offset`) reach, in
              every partition, the log end offsets (committed + `..._lag_messages`) seen by
              the first scrape that started after that 202. /metrics is scraped every
              `POLL_S`; both ends err late (the end offsets may include later requests'
              events, a commit is seen at the next scrape), so it is an upper bound.
5. RSS per process of the server's tree (VmRSS idle, VmHWM at the end of the paced load).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka_pipeline import histogram_quantile  # noqa: E402
from throughput import (  # noqa: E402
    UNLIMITED,
    Load,
    _answer,
    client_events,
    fmt,
    http_requests,
    med,
    run_client,
    send_once,
)

from tests.e2e.server import Server  # noqa: E402

LOAD = Load("500-event batches, gzip", 500, True, 4)
SHARE = 0.7  # of the max processed rate
# /metrics scrape interval of the direct measurement: each scrape also costs the server
# (a lag lookup and the exposition, in the processor's interpreter), so not finer.
POLL_S = 0.1
GOAL_P99_S = 2.0
_SAMPLE = re.compile(r'^(funnelstream_processor_\w+)\{(?:le|partition)="([^"]+)"\} (\S+)$')


# -- /metrics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    started: float  # time.monotonic() when the request was sent
    answered: float
    committed: dict[str, float]  # partition → next offset committed
    ends: dict[str, float]  # partition → log end offset (committed + lag)


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """{metric: {label value: sample}} for the processor's per-partition and bucket series."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.setdefault(m[1], {})[m[2]] = float(m[3])
    return out


def freshness_buckets(text: str) -> dict[str, float]:
    return parse_metrics(text).get("funnelstream_processor_freshness_seconds_bucket", {})


def scrape_of(started: float, answered: float, text: str) -> Scrape | None:
    series = parse_metrics(text)
    lag = series.get("funnelstream_processor_lag_messages")
    if not lag:
        return None  # no partition held (yet), or not the processor's process
    committed = series.get("funnelstream_processor_committed_offset", {})
    # A partition without a commit yet has the gauge missing: nothing committed, 0.
    ends = {p: committed.get(p, 0.0) + n for p, n in lag.items()}
    return Scrape(started, answered, {p: committed.get(p, 0.0) for p in lag}, ends)


def direct_freshness(acked: list[float], scrapes: list[Scrape]) -> list[float]:
    """Per request answered 202 at `acked[i]`: seconds until a scrape shows committed, in
    every partition, the end offsets seen by the first scrape started after that 202, or
    shows no lag at all. (A scrape reads the lag, then the committed-offset gauge: a
    commit in between makes its end offsets too high, which only a lag of 0 settles when
    no later events move the committed offsets past them.)"""
    out = []
    for at in acked:
        seen = next((s for s in scrapes if s.started >= at), None)
        if seen is None:
            continue
        live = next(
            (
                s
                for s in scrapes
                if s.started >= seen.started
                and (
                    s.committed == s.ends  # lag 0: all appended before it began is committed
                    or all(s.committed.get(p, 0.0) >= end for p, end in seen.ends.items())
                )
            ),
            None,
        )
        if live is not None:
            out.append(live.answered - at)
    return out


# -- load ---------------------------------------------------------------------------------


async def paced(
    port: int, requests: list[bytes], rate_eps: float, base: str
) -> tuple[list[float], list[Scrape], int, float]:
    """Send `requests` on a fixed schedule at `rate_eps` while scraping /metrics; go on
    scraping until every partition's committed offset reaches its end (lag 0).
    Returns the 202 times, the scrapes, the non-202 count and the achieved rate."""
    interval = LOAD.events_per_request / rate_eps
    acked: list[float] = []
    refused = 0
    scrapes: list[Scrape] = []
    sent_at: float | None = None  # when the last request was answered

    async def client(first: int, start: float) -> None:
        nonlocal refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for k in range(first, len(requests), LOAD.clients):
                wait = start + k * interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(requests[k])
                if await _answer(reader) == 202:
                    acked.append(time.monotonic())
                else:
                    refused += 1
        finally:
            writer.close()

    async def poller(client: httpx.AsyncClient) -> None:
        while True:
            started = time.monotonic()
            text = (await client.get("/metrics")).text
            scrape = scrape_of(started, time.monotonic(), text)
            if scrape is not None:
                scrapes.append(scrape)
                if sent_at is not None and started > sent_at and scrape.committed == scrape.ends:
                    return
            elif sent_at is not None and not scrapes:
                return  # this port's /metrics has no processor series: nothing to wait for
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - started)))

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        polling = asyncio.create_task(poller(http))
        start = time.monotonic() + 0.2
        await asyncio.gather(*(client(c, start) for c in range(LOAD.clients)))
        sent_at = time.monotonic()
        # Request k is due at start + k × interval: n requests take n intervals.
        sent_s = max(acked) - start + interval if acked else 0.0
        async with asyncio.timeout(600):
            await polling
    achieved = len(acked) * LOAD.events_per_request / sent_s if sent_s else 0.0
    return acked, scrapes, refused, achieved


# -- RSS ----------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from each process's parent in /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def memory_mb(pids: list[int]) -> dict[str, dict[str, float]]:
    """{pid (name): {VmRSS, VmHWM} in MB} of the processes still running."""
    out: dict[str, dict[str, float]] = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[f"{pid} ({fields['Name'].strip()})"] = {
            k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM") if k in fields
        }
    return out


# -- one run ------------------------------------------------------------------------------


def quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def freshness_run(seconds: float, rate: float | None, burst_events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", **UNLIMITED).start()
        try:
            assert server.proc is not None
            time.sleep(1)
            idle = memory_mb(process_tree(server.proc.pid))
            measured = rate is None
            if rate is None:
                burst = http_requests(LOAD, client_events(burst_events, seed=3))
                started = time.perf_counter()
                refused_burst = run_client(send_once(server.port, burst, LOAD.clients))
                server.wait_processed(timeout=600)
                rate = len(burst) * LOAD.events_per_request / (time.perf_counter() - started)
                assert refused_burst == 0, f"{refused_burst} burst requests refused"
            target = SHARE * rate
            count = max(LOAD.clients, round(target * seconds / LOAD.events_per_request))
            requests = http_requests(LOAD, client_events(count * LOAD.events_per_request, seed=5))
            before = freshness_buckets(httpx.get(f"{server.base}/metrics", timeout=30).text)
            acked, scrapes, refused, achieved = run_client(
                paced(server.port, requests, target, server.base)
            )
            after = freshness_buckets(httpx.get(f"{server.base}/metrics", timeout=30).text)
            peak = memory_mb(process_tree(server.proc.pid))
        finally:
            server.stop()
    paced_buckets = {le: n - before.get(le, 0.0) for le, n in after.items()}
    direct = direct_freshness(acked, scrapes)
    # No buckets: the port's /metrics is not the processor's (reported as nan).
    hist_p50, hist_p99 = (
        histogram_quantile(paced_buckets, q) if paced_buckets.get("+Inf") else float("nan")
        for q in (0.5, 0.99)
    )
    direct_p50, direct_p99 = quantiles(direct)
    return {
        "max_eps": rate,
        "max_measured": measured,
        "target_eps": target,
        "achieved_eps": achieved,
        "seconds": seconds,
        "requests": len(requests),
        "refused": refused,
        "hist_events": paced_buckets.get("+Inf", 0.0),
        "hist_buckets": paced_buckets,
        "hist_p50": hist_p50,
        "hist_p99": hist_p99,
        "direct_requests": len(direct),
        "direct_p50": direct_p50,
        "direct_p99": direct_p99,
        "direct_max": max(direct, default=float("nan")),
        "scrapes": len(scrapes),
        # How far the processor fell behind: the most events not yet committed at a
        # scrape, and the time from the last 202 to lag 0.
        "max_lag": max(
            (sum(x.ends.values()) - sum(x.committed.values()) for x in scrapes), default=0
        ),
        "drain_s": scrapes[-1].answered - max(acked) if scrapes and acked else float("nan"),
        "idle_mb": idle,
        "peak_mb": peak,
    }


# -- report -------------------------------------------------------------------------------

NOTES = """- Freshness: `funnelstream serve` (embedded log and engine, as shipped), its max
  processed rate measured by one burst in the same run (events sent → lag 0), then
  500-event gzip batches on a fixed schedule at 70% of it. "histogram" is the processor's
  `funnelstream_processor_freshness_seconds` (ingest receipt → batch committed, per
  event), the difference of the buckets scraped before and after the paced load, with
  the quantiles interpolated within a bucket as Prometheus's `histogram_quantile` does
  (buckets 0.05, 0.1, 0.25, 0.5, 1, 2, 5 s ...: read it to a bucket's resolution).
  "direct" is per request, from its 202 to the first /metrics scrape (every 100 ms) whose
  committed offsets reach, in every partition, the log end offsets seen by the first
  scrape after that 202: /metrics because it is the endpoint that has both the committed
  offset and the lag per partition (/healthz sums the lag, and /readyz has neither), and
  per partition because a sum can be reached by other partitions' later events. It errs
  late (the end offsets may include later events; a commit is seen at the next scrape),
  so it is an upper bound from the client's side. The two differ in what they count:
  the histogram counts each event from its receipt, the direct figure each request until
  its last event (in whichever partition is furthest behind) is committed. The burst
  measures processing once most of it is acknowledged; if the processor cannot sustain
  70% of that while ingest takes the steady load (a lag that grows, per run "lag at
  most" and the drain time), freshness measures the backlog rather than the batching.
- RSS: per process of the server's tree (the server and any children), VmRSS 1 s after
  start and VmHWM (the process's own peak) at the end of the freshness run, burst and
  paced load included."""


def _tree_mb(per_process: dict[str, dict[str, float]], field: str) -> float:
    return sum(m.get(field, 0.0) for m in per_process.values())


def report_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[str], str]:
    """(table rows, per-run lines, notes) for throughput.py's report."""
    target = med([r["target_eps"] for r in runs])
    what = (
        f"freshness, 202 → live, `funnelstream serve` at 70% of max "
        f"({fmt(target)} ev/s, {runs[0]['seconds']:g} s, 500-event gzip batches, 4 clients)"
    )
    rows = []
    for key, how in (("hist", "processor histogram"), ("direct", "direct, per request")):
        p50 = med([r[f"{key}_p50"] for r in runs])
        p99 = med([r[f"{key}_p99"] for r in runs])
        verdict = "met" if p99 <= GOAL_P99_S else "not met"
        rows.append(
            f"| {what}: p50 / p99, {how} | {p50:.2f} / {p99:.2f} s | — | — "
            f"| goal p99 ≤ {GOAL_P99_S:g} s ({verdict}) |"
        )
    idle = [_tree_mb(r["idle_mb"], "VmRSS") for r in runs]
    peak = [_tree_mb(r["peak_mb"], "VmHWM") for r in runs]
    processes = max(len(r["peak_mb"]) for r in runs)
    rows.append(
        f"| same run: server RSS idle / peak, {processes} process(es) summed "
        f"| {fmt(med(idle))} / {fmt(med(peak))} MB | — | — | ~500 / ~770 MB (goal: peak ≤ 800) |"
    )
    per_run = []
    for r in runs:
        source = "burst" if r["max_measured"] else "given"
        per_run.append(
            f"- freshness: max {fmt(r['max_eps'])} ev/s ({source}), target {fmt(r['target_eps'])}, "
            f"achieved {fmt(r['achieved_eps'])} ev/s over {r['requests']} requests "
            f"(non-202: {r['refused']}); histogram p50/p99 {r['hist_p50']:.3f}/"
            f"{r['hist_p99']:.3f} s over {r['hist_events']:,.0f} events; direct p50/p99/max "
            f"{r['direct_p50']:.3f}/{r['direct_p99']:.3f}/{r['direct_max']:.3f} s over "
            f"{r['direct_requests']} requests, {r['scrapes']} scrapes; lag at most "
            f"{r['max_lag']:,.0f} events, lag 0 {r['drain_s']:.1f} s after the last 202; "
            "histogram events "
            "at or under each bound: "
            + ", ".join(f"{le} s {n:,.0f}" for le, n in r["hist_buckets"].items())
        )
        per_run.append(
            "- RSS (MB) idle: "
            + ", ".join(f"{p} {m['VmRSS']:,.0f}" for p, m in r["idle_mb"].items())
            + "; peak (VmHWM): "
            + ", ".join(f"{p} {m['VmHWM']:,.0f}" for p, m in r["peak_mb"].items())
        )
    return rows, per_run, NOTES
