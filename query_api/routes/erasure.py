"""Erasure of one visitor or one user, by the project's admin key (query_api/erasure.py;
the processor's side: processor/erase.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from funnelstream.http_errors import keyed_route_errors
from funnelstream.log import LogUnavailable
from query_api.deps import AdminProject, ClickHouseDep
from query_api.erasure import ErasureLog, erasures, new_erasure_id, user_visitors
from schemas.erasure import Erasure
from schemas.events import MAX_ID_LENGTH

router = APIRouter(tags=["erasure"], responses=keyed_route_errors(503))

RETRY_AFTER_SECONDS = 5


def get_erasure_log(request: Request) -> ErasureLog:
    erasure_log: ErasureLog = request.app.state.erasure_log
    return erasure_log


ErasureLogDep = Annotated[ErasureLog, Depends(get_erasure_log)]
# Ids as ingest takes them (schemas/events.py); `:path` keeps a "/" inside one.
IdPath = Path(min_length=1, max_length=MAX_ID_LENGTH)


async def _append(erasure_log: ErasureLog, records: list[Erasure], kind: str) -> None:
    try:
        await erasure_log.append(records, kind)
    except LogUnavailable as exc:
        raise HTTPException(
            503,
            {"error": "log_unavailable", "message": f"the erasure was not recorded: {exc}"},
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from exc


class ErasureOut(BaseModel):
    """A 202: the erasure is durably in the log; the processor erases in log order."""

    erasure_id: str
    visitors: list[str] = Field(description="The visitors the erasure covers")
    status: Literal["accepted"]


def _accepted(records: list[Erasure], erasure_id: str) -> JSONResponse:
    body: dict[str, Any] = {
        "erasure_id": erasure_id,
        "visitors": [r.visitor_id for r in records],
        "status": "accepted",
    }
    return JSONResponse(body, status_code=202)


@router.delete(
    "/v1/visitors/{visitor_id:path}",
    summary="Erase a visitor",
    status_code=202,
    response_model=ErasureOut,
)
async def erase_visitor(
    project: AdminProject,
    erasure_log: ErasureLogDep,
    visitor_id: Annotated[str, IdPath],
) -> JSONResponse:
    """Erase every event, session, live state, transition and identity of the visitor.

    202 once the erasure is durably in the log: the processor erases the visitor when it
    reaches the record, after the visitor's events sent before the request (see
    /healthz `lag`). Events of the visitor sent after it are new data. An unknown visitor
    is accepted too (nothing to erase)."""
    erasure_id = new_erasure_id()
    records = erasures(erasure_id, project.id, [visitor_id])
    await _append(erasure_log, records, "visitor")
    return _accepted(records, erasure_id)


@router.delete(
    "/v1/users/{user_id:path}",
    summary="Erase a user",
    status_code=202,
    response_model=ErasureOut,
)
async def erase_user(
    project: AdminProject,
    ch: ClickHouseDep,
    erasure_log: ErasureLogDep,
    user_id: Annotated[str, IdPath],
) -> JSONResponse:
    """Erase every visitor that sent this user id or counts for it (as DELETE
    /v1/visitors does), and the user's own rows (`count_by: "user"` funnel state).

    The visitors are those stored when the request arrives (`visitors` in the answer);
    send it again after events still in the log are processed to cover those too."""
    erasure_id = new_erasure_id()
    records = erasures(
        erasure_id, project.id, await user_visitors(ch, project.id, user_id), user_id
    )
    await _append(erasure_log, records, "user")
    return _accepted(records, erasure_id)
