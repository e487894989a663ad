"""Any arrival order on Kafka, through the HTTP ingest, with the server killed mid-run.

Random histories and funnel definitions (those of tests/processor/test_pipeline_late.py),
the funnel declared in the server's config file. The events are sent to `POST /v1/events`
of `funnelstream serve --log-backend kafka` in a random order, a share of them hours or
days late, in several batches, each with its own `event_id` and `timestamp`. After a
random batch is acknowledged the server is killed with SIGKILL (before the processor read
the batch, mid-batch, or after its commit), restarted on the same data directory, topic
and consumer group, and sent the rest. At the end the stored events, sessions, funnel
transitions, the live stage counts and the report equal what the reference computes from
the events.

CI runs a short seeded profile; `KAFKA_LATE_EXAMPLES` raises it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from funnelstream.config import ProcessorSettings, parse_config
from funnelstream.log.kafka import KafkaLog
from processor.sessionize import reference_sessions
from schemas.funnels import FunnelDefinition
from tests.e2e.server import READ, WRITE, Server, stats
from tests.kafka.helpers import PARTITIONS, committed_total, health, kafka_server, unique
from tests.oracle import funnel_reference as reference
from tests.processor.test_live_differential import expected, live_funnels
from tests.processor.test_refold import GAP_MS, deliver, late_orders
from tests.query_api.test_report_differential import END, START, streams

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

EXAMPLES = int(os.environ.get("KAFKA_LATE_EXAMPLES", "4"))
# The server runs with its default timing; the oracle uses the same.
DEFAULTS = ProcessorSettings.model_fields
LATENESS_MS = int(DEFAULTS["lateness_seconds"].default) * 1000
PROJECT = "p"  # the project of the drawn funnels
PROJECTS = f"""
[[projects]]
id = "{PROJECT}"
write_key = "wk_test"
read_key = "rk_test"
"""
_runs = itertools.count()


def toml_value(value: Any) -> str:
    """A JSON-like value as TOML: inline tables for objects (keys quoted), the rest as
    JSON writes it (its strings, numbers, booleans and arrays read the same in TOML)."""
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def config_with(funnel: FunnelDefinition) -> str:
    """The server's config: our project and `funnel`, checked to read back as `funnel`."""
    doc = funnel.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    text = (
        PROJECTS + "\n[[funnels]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in doc.items())
    )
    assert parse_config(text).funnels == (funnel,)
    return text


def payload(e: reference.RefEvent) -> dict[str, Any]:
    """What a client sends for the event: its own id and time."""
    out: dict[str, Any] = {
        "event_id": e.event_id,
        "event": e.event,
        "visitor_id": e.visitor_id,
        "timestamp": e.timestamp_ms,
        "properties": dict(e.properties),
    }
    if e.user_id:
        out["user_id"] = e.user_id
    return out


def send(server: Server, batch: list[reference.RefEvent]) -> None:
    r = httpx.post(
        f"{server.base}/v1/events",
        json={"batch": [payload(e) for e in batch]},
        headers=WRITE,
        timeout=30,
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(batch)}


def get(server: Server, path: str, **params: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base}{path}", params=params, headers=READ, timeout=60)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


def wait_committed(server: Server, timeout: float = 90) -> None:
    """Until the processor holds every partition and has committed all of each: every
    event sent is written (offsets are committed after the ClickHouse write). Not "until
    the stored count is N", so lost events fail the count, not a timeout."""
    deadline = time.monotonic() + timeout
    h: dict[str, Any] = {}
    while time.monotonic() < deadline:
        h = health(server)
        if h.get("lag") == 0 and len(h.get("partitions", [])) == PARTITIONS:
            return
        time.sleep(0.1)
    raise AssertionError(f"not committed in {timeout}s: {h}")


def want_live(funnel: FunnelDefinition, events: list[reference.RefEvent]) -> list[int]:
    """Per step, what `reached` of GET /live counts: visitors at that level or deeper, or
    (counting total, count_by session) the attempts or sessions reaching it."""
    held, per_visitor = expected(funnel, events)
    steps = len(funnel.steps)
    if funnel.counting == "total" or funnel.count_by == "session":
        return [sum(counts[k] for counts in per_visitor.values()) for k in range(steps)]
    levels = [
        max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
        for slots in held.values()
    ]
    return [sum(level > k for level in levels) for k in range(steps)]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    # No shrinking: each example starts the server twice (~15 s). The falsifying example
    # is printed, and derandomize draws it again on the next run.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(live_funnels(), streams(), st.data())
def test_late_events_over_kafka_with_a_kill9_equal_the_reference(
    tmp_path: Path,
    kafka_bootstrap: str,
    funnel: FunnelDefinition,
    events: list[reference.RefEvent],
    data: st.DataObject,
) -> None:
    assert int(DEFAULTS["session_gap_seconds"].default) * 1000 == GAP_MS
    funnel = funnel.model_copy(update={"project": PROJECT})
    config = config_with(funnel)
    arrived = data.draw(late_orders(events))
    # At least two batches when there are two events: some are sent after the restart.
    ends = st.sets(st.integers(1, len(arrived) - 1), min_size=1, max_size=4)
    cuts = data.draw(ends if len(arrived) > 1 else st.just(set()), label="batch ends")
    bounds = [0, *sorted(cuts), len(arrived)]
    batches = [arrived[a:b] for a, b in itertools.pairwise(bounds)]
    last = max(1, len(batches) - 1)
    # Drawn from the end (simplest: the last batch but one), so the killed life has often
    # written and committed earlier batches that the replay and the rest then meet.
    kill_after = last - data.draw(st.integers(0, last - 1), label="batches held back")
    # The processor batches for up to 0.25 s: killed before, during or after its write.
    pause = data.draw(st.sampled_from([0.27, 0.0, 0.1, 0.5]), label="seconds before the kill")

    data_dir = tmp_path / f"serve{next(_runs)}"
    topic, group = unique("late"), unique("processors")

    def life() -> Server:
        return kafka_server("serve", data_dir, kafka_bootstrap, topic, group, config).start()

    sent = 0
    server = life()
    try:
        for batch in batches[:kill_after]:
            if sent:
                # Earlier batches are stored: the late events of this one meet them.
                wait_committed(server)
            send(server, batch)
            sent += len(batch)
        time.sleep(pause)
    finally:
        server.kill9()
    # How far the killed processor had committed (less than sent: killed mid-run).
    committed, acknowledged = asyncio.run(committed_total(KafkaLog(kafka_bootstrap), topic, group))
    assert acknowledged == sent

    server = life()
    try:
        for batch in batches[kill_after:]:
            wait_committed(server)
            send(server, batch)
            sent += len(batch)
        assert sent == len(events)
        wait_committed(server)
        totals = stats(server)
        live = get(server, f"/v1/funnels/{funnel.id}/live", minutes="0")
        report = get(
            server, f"/v1/funnels/{funnel.id}/report", **{"from": str(START), "to": str(END)}
        )
    finally:
        server.stop()
    print(
        f"killed {pause}s after batch {kill_after}/{len(batches)}: "
        f"{committed}/{acknowledged} acknowledged events committed, {len(events)} in all"
    )

    # Stored events, each once; nothing dead-lettered.
    assert totals["events"] == len(events)
    assert totals["visitors"] == len({e.visitor_id for e in events})
    assert totals["dead_letters"] == 0

    # Sessions: the batch sessionization's count.
    want_sessions = [
        s
        for v in {e.visitor_id for e in events}
        for s in reference_sessions([e.timestamp_ms for e in events if e.visitor_id == v], GAP_MS)
    ]
    assert totals["sessions"] == len(want_sessions)

    # Transitions: as many as in-timestamp-order delivery leaves.
    in_order = sorted(events, key=lambda e: (e.timestamp_ms, e.event_id))
    _, tables = deliver(funnel, in_order, LATENESS_MS)
    assert totals["funnel_transitions"] == len(tables.transition_end_state())

    # Live stages: the reference's levels (or attempts, or sessions) per step.
    reached = want_live(funnel, events)
    at_stage = [n - (reached[k + 1] if k + 1 < len(reached) else 0) for k, n in enumerate(reached)]
    assert [s["reached"] for s in live["stages"]] == reached
    assert [s["at_stage"] for s in live["stages"]] == at_stage

    # The report over [START, END): the reference's counts per step (now is past END).
    want = reference.report(funnel, events, START, END, END)
    assert [s["visitors"] for s in report["steps"]] == [step.entities for step in want]
