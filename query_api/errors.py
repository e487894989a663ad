"""ClickHouse errors as HTTP answers, for every query route at once.

`funnelstream.clickhouse` has classified the error already; this only picks the status:

* `ClickHouseUnavailable` → 503 `clickhouse_unavailable` with `Retry-After`: ask again.
* `ClickHouseQueryError` → 500 `query_failed`, logged with its SQL: our bug, not the
  caller's. Definitions are validated with the engine's own rules before any query runs
  (schemas/funnels.py: numbers, RE2 regexes), so an engine error is never the caller's.

Both are counted in `funnelstream_query_errors_total{kind}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouseQueryError, ClickHouseUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    metrics.QUERY_ERRORS.labels("unavailable").inc()
    return JSONResponse(
        {"error": "clickhouse_unavailable", "message": str(exc)},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _query_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClickHouseQueryError)
    metrics.QUERY_ERRORS.labels("query_failed").inc()
    log.error("query failed on %s %s: %s\nSQL: %s", request.method, request.url.path, exc, exc.sql)
    # The server's message names our tables and columns: it goes to the log, not out.
    return JSONResponse(
        {"error": "query_failed", "message": f"the query failed (ClickHouse code {exc.code})"},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClickHouseUnavailable, _unavailable)
    app.add_exception_handler(ClickHouseQueryError, _query_failed)
