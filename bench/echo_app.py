"""The ingest benchmark's baseline: a bare Starlette app that reads the request body and
answers 202, served by uvicorn exactly like `funnelstream ingest` (bench/throughput.py).
Whatever ingest costs beyond this is ours: routing, limits, validation, the log append."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCEPTED = b'{"accepted":1}'


async def events(request: Request) -> Response:
    await request.body()
    return Response(ACCEPTED, status_code=202, media_type="application/json")


async def healthz(_request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/v1/events", events, methods=["POST"]), Route("/healthz", healthz)])
