"""ClickHouse errors as HTTP answers, for every query route at once.

`funnelstream.clickhouse` has classified the error already; this only picks the status:

* `ClickHouseUnavailable` → 503 `clickhouse_unavailable` with `Retry-After`: ask again.
* `ClickHouseQueryError` → 500 `query_failed`, logged with its SQL: our bug, not the
  caller's. Except where the error is provably the caller's input (below) → 400.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from funnelstream.clickhouse import ClickHouseQueryError, ClickHouseUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# Server codes that only a caller's input can cause, with the error code we answer.
# Every regex in our SQL is a funnel filter's `regex` value; it was checked with Python's
# `re`, which takes patterns (lookarounds, backreferences) that ClickHouse's RE2 refuses.
CLIENT_ERRORS = {427: "invalid_regex"}  # CANNOT_COMPILE_REGEXP


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"error": "clickhouse_unavailable", "message": str(exc)},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _query_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClickHouseQueryError)
    client_error = CLIENT_ERRORS.get(exc.code) if exc.code is not None else None
    if client_error is not None:
        return JSONResponse({"error": client_error, "message": exc.message}, status_code=400)
    log.error("query failed on %s %s: %s\nSQL: %s", request.method, request.url.path, exc, exc.sql)
    # The server's message names our tables and columns: it goes to the log, not out.
    return JSONResponse(
        {"error": "query_failed", "message": f"the query failed (ClickHouse code {exc.code})"},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClickHouseUnavailable, _unavailable)
    app.add_exception_handler(ClickHouseQueryError, _query_failed)
