"""One error envelope for every HTTP answer that is not a success, on every route.

    {"error": "<stable code>", "message": "<for a human>", "field": "<path, if one>"}

Ingest's batch answers add `errors` (one entry per refused event: index, field, message).
Routes raise `HTTPException(status, {"error", "message", "field"})` or let FastAPI refuse
a parameter; the handlers here put both in the envelope at the top level, so a client reads
`body["error"]` whatever refused it. A request FastAPI cannot validate is a 400
`invalid_request` with the field path, never a 422: one validation answer for the API.

Routes document their refusals with `error_responses(400, 401, ...)`, which the OpenAPI
document and the schemathesis contract test (tests/contract/) read.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class EventErrorOut(BaseModel):
    index: int = Field(description="Position of the event in the batch (0 for a single event)")
    field: str = Field(description="The offending field's path, e.g. `properties.price`")
    message: str


class ErrorOut(BaseModel):
    """The body of every 4xx and 5xx answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": "invalid_time", "message": "ISO-8601 or epoch ms", "field": "from"},
                {"error": "clickhouse_unavailable", "message": "connection refused"},
            ]
        }
    )

    error: str = Field(description="A stable code, e.g. `invalid_time`, `funnel_not_found`")
    message: str = Field(description="What is wrong, for a human")
    field: str | None = Field(
        default=None, description="The request field at fault: query parameter or body path"
    )
    errors: list[EventErrorOut] | None = Field(
        default=None, description="Ingest only: each refused event of a batch"
    )


# What each status means on this API; a route passes the statuses it can answer.
STATUS_MEANINGS: dict[int, str] = {
    400: "Malformed request: `field` names what, `error` is a stable code",
    401: "Missing or unknown key for this route",
    403: "The key is valid but may not do this",
    404: "No such funnel (or route)",
    409: "Conflicts with the current state (a limit, a read-only funnel)",
    413: "Body or batch too large",
    415: "Unsupported Content-Encoding",
    429: "Too many requests: retry after `Retry-After` seconds",
    500: "A fault of the server (logged with its cause)",
    503: "A backend is unavailable: retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error envelope as its schema."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorOut, "description": STATUS_MEANINGS[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def _field_path(loc: Sequence[int | str]) -> str:
    """FastAPI's error location as the caller names it: `from`, `funnel.steps[0].event`."""
    parts = list(loc[1:]) if loc and loc[0] in ("query", "body", "path", "header") else list(loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    body = {
        "error": "invalid_request",
        "field": _field_path(first["loc"]),
        "message": str(first["msg"]),
    }
    return JSONResponse(body, status_code=400)


# What FastAPI raises when a JSON body does not parse (also past the parser's depth).
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.detail, dict) and "error" in exc.detail:
        body = {"message": exc.detail["error"], **exc.detail}
    elif exc.detail == _FASTAPI_BODY_ERROR:
        body = {"error": "invalid_json", "message": "the body is not valid JSON (or too deep)"}
    else:
        # Starlette's own refusals (unknown route, wrong method) carry the status phrase.
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        body = {"error": code, "message": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _without_422(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document without FastAPI's automatic 422 (never answered here: see
    `_invalid_request`) and with the 400 it stands for on every route with parameters."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": STATUS_MEANINGS[400],
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                    },
                }
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in error_schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault("ErrorOut", error_schema)
    app.openapi_schema = schema
    return schema


def install_error_envelope(app: FastAPI) -> None:
    """The envelope for every refusal of `app`, and its OpenAPI document to match."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.openapi = lambda: _without_422(app)  # type: ignore[method-assign]


# Every keyed query route can answer these: a bad parameter, no key, a key of another
# scope (funnelstream/keys.py), a body over its cap and a rate limit
# (funnelstream/request_limits.py).
KEYED_ROUTE_STATUSES = (400, 401, 403, 413, 429)


def keyed_route_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`error_responses` for a keyed query route: the statuses every such route can
    answer, and the route's own."""
    return error_responses(*sorted({*KEYED_ROUTE_STATUSES, *statuses}))
