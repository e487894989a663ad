"""Project totals: what is stored, after deduplication (FINAL)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from funnelstream.http_errors import keyed_route_errors
from query_api.deps import ClickHouseDep, ReadProject

router = APIRouter(prefix="/v1/stats", tags=["stats"], responses=keyed_route_errors(503))


class StatsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "events": 1200,
                    "visitors": 310,
                    "sessions": 420,
                    "funnel_transitions": 640,
                    "dead_letters": 0,
                }
            ]
        }
    )

    events: int
    visitors: int
    sessions: int
    funnel_transitions: int
    dead_letters: int


@router.get("", summary="Stored events, visitors, sessions and dead letters of the project")
async def project_stats(project: ReadProject, ch: ClickHouseDep) -> StatsOut:
    params = {"p": project.id}
    ((events, visitors),) = await ch.query_rows(
        "SELECT count(), uniqExact(visitor_id) FROM events FINAL WHERE project_id = {p:String}",
        params,
    )
    ((sessions,),) = await ch.query_rows(
        "SELECT count() FROM sessions FINAL WHERE project_id = {p:String}", params
    )
    ((transitions,),) = await ch.query_rows(
        "SELECT count() FROM funnel_transitions FINAL "
        "WHERE project_id = {p:String} AND kind != 'retracted'",
        params,
    )
    ((dead_letters,),) = await ch.query_rows(
        "SELECT count() FROM dead_letters FINAL WHERE project_id = {p:String}", params
    )
    return StatsOut(
        events=int(events),
        visitors=int(visitors),
        sessions=int(sessions),
        funnel_transitions=int(transitions),
        dead_letters=int(dead_letters),
    )
