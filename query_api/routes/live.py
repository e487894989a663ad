"""Live funnel stages and transitions, from the processor's state tables.

`GET /v1/funnels/{id}/live` answers from `funnel_state` and `funnel_transitions` (read with
FINAL) in milliseconds; `GET /v1/funnels/{id}/live/stream` sends each new transition as a
server-sent event, polling ClickHouse once a second until the client goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from funnel.stages import at_stage_from_reached
from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.http_errors import keyed_route_errors
from query_api import compute
from query_api.deps import ClickHouseDep, ReadProject
from query_api.routes.funnel_lookup import LiveFunnel
from query_api.routes.reports import parse_time
from query_api.sql.live import (
    attempt_counts_sql,
    recent_transitions_sql,
    stage_counts_sql,
    transitions_after_sql,
)
from schemas.funnels import FunnelDefinition

router = APIRouter(prefix="/v1/funnels", tags=["live"], responses=keyed_route_errors(404, 503))

# The stream re-reads this much before its cursor, so a transition written late by another
# processor (or in the same millisecond as the last one sent) is not missed.
STREAM_OVERLAP = timedelta(seconds=10)
STREAM_BATCH = 1000
HEARTBEAT_SECONDS = 15.0


class LiveStageOut(BaseModel):
    index: int
    event: str
    name: str | None
    at_stage: int = Field(
        description="Visitors whose deepest step is this one, now (counting=total: attempts,"
        " count_by=session: sessions, that reached this step and not the next)"
    )
    reached: int = Field(
        description="Visitors who reached this step or a later one (counting=total:"
        " attempts; count_by=session: sessions)"
    )
    transitions: int = Field(description="Visitors who reached this step in the last `minutes`")


class LiveOut(BaseModel):
    funnel_id: str
    minutes: int
    stages: list[LiveStageOut]
    query_ms: float


@router.get("/{funnel_id}/live", response_model=LiveOut, summary="Visitors at each stage now")
async def live_stages(
    funnel_id: str,
    project: ReadProject,
    funnel: LiveFunnel,
    ch: ClickHouseDep,
    minutes: Annotated[int, Query(ge=0, le=24 * 60)] = 15,
) -> LiveOut:
    """Visitors at each stage of a saved funnel now (all time, as the processor holds
    them), and per step the visitors who reached it in the last `minutes` (by event time;
    0 skips that query). Every saved funnel has live state, whatever its options."""
    started = time.monotonic()
    recent: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    # Attempts or sessions are counted per visitor by the processor (step_attempts).
    per_visitor_counts = funnel.counting == "total" or funnel.count_by == "session"
    # ClickHouse errors become HTTP answers in one place: query_api/errors.py.
    rows = await ch.query_rows(*stage_counts_sql(project.id, funnel.id))
    if per_visitor_counts:
        attempts = await ch.query_rows(*attempt_counts_sql(project.id, funnel.id))
    if minutes:
        since = datetime.now(UTC) - timedelta(minutes=minutes)
        recent = await ch.query_rows(*recent_transitions_sql(project.id, funnel.id, since))
    at_level = {int(level): int(count) for level, count in rows}
    reached = compute.reached_per_step(at_level, len(funnel.steps))
    if per_visitor_counts:
        sums = [int(n) for n in attempts[0][0]] if attempts and attempts[0][0] else []
        reached = [sums[k] if k < len(sums) else 0 for k in range(len(funnel.steps))]
        at_level = {k + 1: n for k, n in enumerate(at_stage_from_reached(reached))}
    moved = {int(step): int(count) for step, count in recent}
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("live").observe(elapsed)
    stages = [
        LiveStageOut(
            index=k,
            event=s.label(),
            name=s.name,
            at_stage=at_level.get(k + 1, 0),
            reached=reached[k],
            transitions=moved.get(k + 1, 0),
        )
        for k, s in enumerate(funnel.steps)
    ]
    return LiveOut(
        funnel_id=funnel.id, minutes=minutes, stages=stages, query_ms=round(elapsed * 1000, 2)
    )


def sse_message(data: dict[str, Any], event: str, event_id: str | None = None) -> str:
    """One server-sent event (the data is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class StreamCounter:
    """Streams open now (tests and operators check that a closed client ends its stream)."""

    open = 0


async def transition_stream(
    ch: ClickHouse,
    funnel: FunnelDefinition,
    after: datetime,
    is_disconnected: Callable[[], Awaitable[bool]],
    poll_seconds: float = 1.0,
) -> AsyncIterator[str]:
    """Server-sent events: one `transition` per visitor reaching a step, written by the
    processor at or after `after`, in write order; one `correction` when a late event's
    re-fold changed a visitor's transitions (`retracted`: transitions sent before that no
    longer hold; `corrected`: the ones made instead; a consumer that acted on a retracted
    transition decides itself what to undo); a comment line as heartbeat. Ends when the
    client disconnects. Each row is sent once."""
    StreamCounter.open += 1
    cursor = after
    sent: dict[tuple[str, int, str, int], datetime] = {}
    quiet_since = time.monotonic()
    labels = [s.label() for s in funnel.steps]
    # Within one catch-up, a full page is followed by the page after its last row: re-read
    # from the overlap, a full page of rows already sent would be read again forever.
    floor = cursor - STREAM_OVERLAP
    past: tuple[datetime, str, int, str] | None = None
    try:
        yield f"retry: {int(poll_seconds * 1000)}\n\n"
        while not await is_disconnected():
            sql, params = transitions_after_sql(
                funnel.project, funnel.id, floor, STREAM_BATCH, past
            )
            try:
                rows = await ch.query_rows(sql, params)
            except ClickHouseUnavailable:
                rows = []
                yield ": clickhouse unavailable, retrying\n\n"
            fresh = 0
            corrections: dict[tuple[str, datetime], dict[str, Any]] = {}
            for visitor, step, reached_at, started_at, processed_at, kind in rows:
                written = _utc(processed_at)
                cursor = max(cursor, written)
                key = (str(visitor), int(step), str(kind), _ms(_utc(reached_at)))
                if key in sent:
                    continue
                sent[key] = written
                fresh += 1
                data = {
                    "visitor_id": key[0],
                    "index": key[1] - 1,
                    "event": labels[key[1] - 1] if key[1] <= len(labels) else None,
                    "reached_at": _utc(reached_at).isoformat(),
                    "attempt_started_at": _utc(started_at).isoformat(),
                    "processed_at": written.isoformat(),
                }
                if kind == "reached":
                    yield sse_message(data, "transition", str(_ms(written)))
                    continue
                # A late event's re-fold: its retractions and replacements for one visitor
                # share a write time and go out as one `correction`.
                group = corrections.setdefault(
                    (key[0], written),
                    {
                        "visitor_id": key[0],
                        "processed_at": written.isoformat(),
                        "retracted": [],
                        "corrected": [],
                    },
                )
                del data["visitor_id"], data["processed_at"]
                group[str(kind)].append(data)
            for (_, written), group in corrections.items():
                yield sse_message(group, "correction", str(_ms(written)))
            horizon = cursor - STREAM_OVERLAP
            for key in [k for k, written in sent.items() if written < horizon]:
                del sent[key]
            if fresh:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            if len(rows) < STREAM_BATCH:
                past = None
                floor = cursor - STREAM_OVERLAP
                await asyncio.sleep(poll_seconds)
            else:
                last = rows[-1]
                past = (_utc(last[4]), str(last[0]), int(last[1]), str(last[5]))
    finally:
        StreamCounter.open -= 1


@router.get(
    "/{funnel_id}/live/stream",
    summary="Server-sent events: transitions as the processor writes them",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def live_stream(
    funnel_id: str,
    request: Request,
    project: ReadProject,
    funnel: LiveFunnel,
    ch: ClickHouseDep,
    since: Annotated[str | None, Query(description="ISO-8601 or epoch ms; default now")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """`text/event-stream` of `transition` events (`data`: visitor_id, index, event,
    reached_at, attempt_started_at, processed_at), polling ClickHouse every second. A
    reconnecting client sends `Last-Event-ID` (the write time in epoch ms) and resumes
    from there; `since` starts from an earlier write time. The stream ends when the
    client disconnects."""
    now = datetime.now(UTC)
    if last_event_id and last_event_id.isdigit():
        after = parse_time(last_event_id, now, "Last-Event-ID")
    else:
        after = parse_time(since, now, "since")
    return StreamingResponse(
        transition_stream(ch, funnel, after, request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
