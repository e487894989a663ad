"""The stage board: who stands at each stage of a saved funnel now, page by page or as CSV.

`GET /v1/funnels/{id}/board` lists the visitors (users, for funnels counting users) whose
deepest step is each stage, from the processor's state (query_api/sql/board.py), with when
they entered the stage, their last activity and the properties asked for; per stage the
total with the same filters. Without filters those totals are the live route's `at_stage`
for funnels counting unique entities (a funnel counting attempts or sessions counts those
there; the board lists each visitor once, at the stage of its current attempt).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.http_errors import keyed_route_errors
from query_api.board import (
    BadBoardRequest,
    decode_cursor,
    encode_cursor,
    parse_properties,
)
from query_api.csv_answer import csv_lines
from query_api.deps import ClickHouseDep, ReadProject
from query_api.routes.funnel_lookup import LiveFunnel
from query_api.sql.board import BoardCursor, BoardQuery, board_page_sql, board_totals_sql
from schemas.funnels import FunnelDefinition

router = APIRouter(
    prefix="/v1/funnels", tags=["stage board"], responses=keyed_route_errors(404, 503)
)

EXPORT_PAGE = 1000

Stage = Annotated[int | None, Query(ge=0, le=254, description="0-based; default: every stage")]
StalledFor = Annotated[
    int | None,
    Query(ge=0, le=10 * 365 * 86400, description="Only those at their stage this many seconds"),
]
Properties = Annotated[
    list[str],
    Query(alias="property", description="A property to show (the newest value); repeatable"),
]
Where = Annotated[
    list[str],
    Query(description="`name=value`: only those whose newest `name` is `value`; repeatable"),
]


class BoardStageOut(BaseModel):
    index: int
    event: str
    name: str | None
    visitors: int = Field(description="At this stage now, with the filters")


class BoardVisitorOut(BaseModel):
    visitor_id: str = Field(description="The user id for funnels counting users")
    stage: int = Field(description="0-based index of the stage the visitor is at")
    entered_at: datetime = Field(description="When the visitor reached this stage (event time)")
    last_activity_at: datetime | None = Field(description="The visitor's newest event time")
    properties: dict[str, str] = Field(
        description="The newest value of each property asked for ('' if never sent)"
    )


class BoardOut(BaseModel):
    funnel_id: str
    as_of: datetime
    stages: list[BoardStageOut]
    visitors: list[BoardVisitorOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")
    query_ms: float


def _bad(e: BadBoardRequest) -> HTTPException:
    return HTTPException(
        400, {"error": "invalid_board_request", "field": e.field, "message": str(e)}
    )


def _query(
    funnel: FunnelDefinition,
    now: datetime,
    stage: int | None,
    stalled_for: int | None,
    properties: Sequence[str],
    where: Sequence[str],
) -> BoardQuery:
    if stage is not None and stage >= len(funnel.steps):
        raise HTTPException(
            400,
            {
                "error": "invalid_board_request",
                "field": "stage",
                "message": f"the funnel has {len(funnel.steps)} steps (0-based)",
            },
        )
    try:
        names, pairs = parse_properties(properties, where)
    except BadBoardRequest as e:
        raise _bad(e) from e
    return BoardQuery(
        project=funnel.project,
        funnel_id=funnel.id,
        level=None if stage is None else stage + 1,
        stalled_before=None if stalled_for is None else now - timedelta(seconds=stalled_for),
        properties=names,
        where=pairs,
        by_user=funnel.count_by == "user",
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _visitor(row: Sequence[Any], names: Sequence[str]) -> BoardVisitorOut:
    level, entered, visitor, last_seen, *values = row
    seen = _utc(last_seen) if last_seen is not None else None
    return BoardVisitorOut(
        visitor_id=str(visitor),
        stage=int(level) - 1,
        entered_at=_utc(entered),
        # No stored event (a user whose visitors' events expired): the epoch, shown as none.
        last_activity_at=seen if seen is not None and seen.timestamp() > 0 else None,
        properties=dict(zip(names, (str(v) for v in values), strict=True)),
    )


def _cursor_after(row: Sequence[Any]) -> BoardCursor:
    return BoardCursor(int(row[0]), int(_utc(row[1]).timestamp() * 1000), str(row[2]))


@router.get("/{funnel_id}/board", response_model=BoardOut, summary="Who is at each stage now")
async def stage_board(
    funnel_id: str,
    project: ReadProject,
    funnel: LiveFunnel,
    ch: ClickHouseDep,
    stage: Stage = None,
    stalled_for: StalledFor = None,
    properties: Properties = [],  # noqa: B006 (FastAPI copies defaults per request)
    where: Where = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> BoardOut:
    """Visitors at each stage of a saved funnel now, as the processor holds them, ordered
    by stage, then by when they entered it (oldest first), then by id; `limit` per page.
    `next_cursor` continues after the last row (null on the last page): a visitor moving
    on between pages is seen once or not at all, never twice at one stage."""
    started = time.monotonic()
    now = datetime.now(UTC)
    q = _query(funnel, now, stage, stalled_for, properties, where)
    try:
        after = decode_cursor(cursor) if cursor else None
    except BadBoardRequest as e:
        raise _bad(e) from e
    rows = await ch.query_rows(*board_page_sql(q, after, limit + 1))
    totals = dict(await ch.query_rows(*board_totals_sql(q)))
    page = rows[:limit]
    elapsed = time.monotonic() - started
    metrics.QUERY_SECONDS.labels("board").observe(elapsed)
    return BoardOut(
        funnel_id=funnel.id,
        as_of=now,
        stages=[
            BoardStageOut(index=k, event=s.label(), name=s.name, visitors=int(totals.get(k + 1, 0)))
            for k, s in enumerate(funnel.steps)
        ],
        visitors=[_visitor(r, q.properties) for r in page],
        next_cursor=encode_cursor(_cursor_after(page[-1])) if len(rows) > limit else None,
        query_ms=round(elapsed * 1000, 2),
    )


async def _csv(ch: ClickHouse, funnel: FunnelDefinition, q: BoardQuery) -> AsyncIterator[str]:
    labels = [s.label() for s in funnel.steps]
    head = ["visitor_id", "stage", "event", "entered_at", "last_activity_at", *q.properties]
    yield csv_lines([head])
    after: BoardCursor | None = None
    while True:
        rows = await ch.query_rows(*board_page_sql(q, after, EXPORT_PAGE))
        out = []
        for row in rows:
            v = _visitor(row, q.properties)
            seen = v.last_activity_at.isoformat() if v.last_activity_at else ""
            stage = [str(v.stage), labels[v.stage], v.entered_at.isoformat(), seen]
            out.append([v.visitor_id, *stage, *v.properties.values()])
        yield csv_lines(out)
        if len(rows) < EXPORT_PAGE:
            return
        after = _cursor_after(rows[-1])


@router.get(
    "/{funnel_id}/board/export",
    summary="The stage board as CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def stage_board_csv(
    funnel_id: str,
    project: ReadProject,
    funnel: LiveFunnel,
    ch: ClickHouseDep,
    stage: Stage = None,
    stalled_for: StalledFor = None,
    properties: Properties = [],  # noqa: B006
    where: Where = [],  # noqa: B006
) -> StreamingResponse:
    """Every visitor the board holds with these filters, in the board's order, as CSV:
    visitor_id, stage (0-based), event, entered_at, last_activity_at, then one column per
    property. A cell a spreadsheet would read as a formula starts with `'`."""
    q = _query(funnel, datetime.now(UTC), stage, stalled_for, properties, where)
    # The first page is read before answering, so a failing query is an error status,
    # not a cut-off 200.
    stream = _csv(ch, funnel, q)
    head = await anext(stream)
    first = await anext(stream)

    async def body() -> AsyncIterator[str]:
        yield head
        yield first
        async for chunk in stream:
            yield chunk

    filename = f"{funnel.id}-board.csv"
    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
