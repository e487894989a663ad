"""Live state of funnels counted by user, through the real processor, log and engine.

A user's visitors land on different partitions and identify at any point (also after
their funnel events, and switching users); the processor writes in small batches, so
users are rebuilt many times from partial data. The live stage counts must equal the
pure-Python reference over the same events (the SQL report equals the reference too:
tests/query_api/test_report_differential.py). Also through a crash between the rows and
the visitor states, and for a user funnel saved after the events were stored (backfill).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from pathlib import Path

import pytest

from funnelstream.clickhouse import ClickHouse
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from query_api.sql.live import stage_counts_sql
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.oracle import funnel_reference as reference
from tests.processor.test_pipeline import T0, append, die_before_visitor_states, run_until_idle

pytestmark = pytest.mark.clickhouse

STEPS = ("view", "cart", "buy")
BY_USER = FunnelDefinition.model_validate(
    {
        "id": "by_user",
        "project": "p",
        "window_seconds": 600,
        "steps": [{"event": s} for s in STEPS],
        "count_by": "user",
    }
)
# Another shape kept per user: strict order (every event read) and total attempts.
STRICT_BY_USER = BY_USER.model_copy(update={"id": "strict_by_user", "order": "strict"})
TOTAL_BY_USER = BY_USER.model_copy(update={"id": "total_by_user", "counting": "total"})


def user_traffic(visitors: int, users: int, seed: int, start_ms: int = T0) -> list[Event]:
    """Visitors walking the steps (and noise), some identifying as one of `users` users
    at a random point, a few switching to another user later, some never. Per visitor in
    time order; visitors interleaved by time, as a storefront sends them."""
    rng = random.Random(seed)
    out = []
    for v in range(visitors):
        ts = start_ms + rng.randrange(0, 3_600_000)
        identify_at = rng.choice([0, 1, 2, 4, 99])  # 99: never identifies
        user = f"u{rng.randrange(users)}"
        switch_at = rng.choice([3, 99, 99, 99])
        for k in range(rng.randrange(1, 7)):
            ts += rng.choice([1000, 20_000, 200_000, 700_000])
            name = rng.choice([*STEPS, *STEPS, "page"])
            if k == switch_at:
                user = f"u{rng.randrange(users)}"
            out.append(
                Event(
                    project_id="p",
                    event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    event=name,
                    visitor_id=f"v{v}",
                    timestamp_ms=ts,
                    received_at_ms=ts,
                    user_id=user if k >= identify_at else "",
                )
            )
    return sorted(out, key=lambda e: e.timestamp_ms)


def expected_levels(funnel: FunnelDefinition, events: list[Event]) -> dict[int, int]:
    """Entities per deepest step (1-based), from the reference."""
    ref = [
        reference.RefEvent(e.event_id, e.event, e.visitor_id, e.timestamp_ms, e.user_id)
        for e in events
    ]
    held = reference.held_steps(funnel, ref, 0, 2**62)
    depth = Counter(max((k + 1 for k, s in enumerate(h) if s), default=0) for h in held.values())
    return {k: n for k, n in depth.items() if k}


def expected_attempts(funnel: FunnelDefinition, events: list[Event]) -> list[int]:
    ref = [
        reference.RefEvent(e.event_id, e.event, e.visitor_id, e.timestamp_ms, e.user_id)
        for e in events
    ]
    per_entity = reference.attempt_counts(funnel, ref, 0, 2**62)
    return [sum(c[k] for c in per_entity.values()) for k in range(len(funnel.steps))]


def live_levels(ch: ClickHouse, funnel: FunnelDefinition) -> dict[int, int]:
    """What `/live` counts: rows of funnel_state FINAL per level (level 0: emptied)."""
    rows = ch.query_rows_sync(*stage_counts_sql("p", funnel.id))
    return {int(level): int(n) for level, n in rows if int(level)}


def live_attempts(ch: ClickHouse, funnel: FunnelDefinition) -> list[int]:
    ((sums,),) = ch.query_rows_sync(
        "SELECT sumForEach(step_attempts) FROM funnel_state FINAL "
        "WHERE project_id = 'p' AND funnel_id = {f:String} AND notEmpty(step_attempts)",
        {"f": funnel.id},
    )
    return [int(n) for n in sums]


def config() -> ProcessorConfig:
    return ProcessorConfig(batch_max_messages=40, batch_max_seconds=0.02, poll_max_messages=40)


async def test_user_funnels_live_equal_the_reference(ch: ClickHouse, tmp_path: Path) -> None:
    events = user_traffic(visitors=120, users=25, seed=5)
    identified = {e.user_id for e in events if e.user_id}
    assert len(identified) > 15 and any(not e.user_id for e in events)
    log = EmbeddedLog(tmp_path / "log", default_partitions=4)
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    funnels = [BY_USER, STRICT_BY_USER, TOTAL_BY_USER]
    processor = Processor(log, ch, FunnelCatalog(funnels), config())
    await run_until_idle(processor, log, len(events))
    for funnel in funnels:
        want = expected_levels(funnel, events)
        assert live_levels(ch, funnel) == want, funnel.id
    assert live_attempts(ch, TOTAL_BY_USER) == expected_attempts(TOTAL_BY_USER, events)
    # Each identified visitor's own row is empty; users have rows of their own.
    ((users_with_rows,),) = ch.query_rows_sync(
        "SELECT uniqExact(visitor_id) FROM funnel_state FINAL "
        "WHERE funnel_id = 'by_user' AND visitor_id LIKE 'u%'"
    )
    assert users_with_rows == len(identified)
    # Saved afterwards: the backfill builds the same state from the stored events.
    later = BY_USER.model_copy(update={"id": "later"})
    processor = Processor(log, ch, FunnelCatalog([*funnels, later]), config())
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    for _ in range(400):
        ((done,),) = ch.query_rows_sync(
            "SELECT count() FROM funnel_backfills FINAL WHERE funnel_id = 'later'"
        )
        if done == 4:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert live_levels(ch, later) == expected_levels(later, events)
    await log.close()


async def test_user_funnels_exact_after_a_crash_before_the_visitor_states(
    ch: ClickHouse, tmp_path: Path
) -> None:
    events = user_traffic(visitors=80, users=15, seed=9)
    log = EmbeddedLog(tmp_path / "log", default_partitions=4)
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    # The first run writes rows and users, then every visitor-state write fails: it never
    # commits, and the next run replays everything on top of what is stored.
    await die_before_visitor_states(log, ch, FunnelCatalog([BY_USER]), config())
    assert live_levels(ch, BY_USER)  # user rows landed before the "crash"

    second = Processor(log, ch, FunnelCatalog([BY_USER]), config())
    await run_until_idle(second, log, len(events))
    await log.close()
    assert live_levels(ch, BY_USER) == expected_levels(BY_USER, events)
