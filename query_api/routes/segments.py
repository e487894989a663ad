"""Segment filters: restrict a report to the entities that sent at least one event in
[from, to) on which every filter holds.

A segment is sent as the query parameter `segment`, a JSON array of property filters
written exactly as a funnel step's `filters` (`{"property", "op", "value"}`; docs/
funnels.md). It is validated by the funnel rules themselves (a throwaway one-step
definition through `parse_definition`), so a segment is refused where a step filter
would be, with the field renamed to `segment[i]...`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import HTTPException, Query

from query_api.routes.funnels import parse_definition
from schemas.funnels import PropertyFilter

MAX_FILTERS = 10

# The `segment` query parameter of the funnel reports, declared once.
SegmentQuery = Annotated[
    str | None,
    Query(
        max_length=4000,
        description="JSON array of property filters, as a funnel step's `filters`: only"
        " entities with an event in the range on which all hold, e.g."
        ' [{"property": "utm_source", "op": "eq", "value": "google"}]',
    ),
]
# The throwaway definition's path to its filters: `steps[0].filters` or `steps.0.filters`.
_STEP_FILTERS = re.compile(r"^steps(?:\[0\]|\.0)\.filters(?:\.(\d+)|\[(\d+)\])?")


def _refuse(code: str, field: str, message: str) -> HTTPException:
    return HTTPException(400, {"error": code, "field": field, "message": message})


def _segment_field(field: str) -> str:
    def rename(m: re.Match[str]) -> str:
        index = m.group(1) or m.group(2)
        return "segment" if index is None else f"segment[{index}]"

    return _STEP_FILTERS.sub(rename, field)


def parse_segment(text: str | None, project: str) -> tuple[PropertyFilter, ...]:
    """The filters of `segment` (none without it), or a 400 naming the field."""
    if text is None or not text.strip():
        return ()
    try:
        filters = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _refuse("invalid_segment", "segment", "a JSON array of property filters") from exc
    if not isinstance(filters, list) or not 1 <= len(filters) <= MAX_FILTERS:
        raise _refuse(
            "invalid_segment", "segment", f"a JSON array of 1 to {MAX_FILTERS} property filters"
        )
    body = {"id": "segment", "steps": [{"event": "segment", "filters": filters}, {"event": "_"}]}
    try:
        funnel = parse_definition(body, project)
    except HTTPException as exc:
        found: Any = exc.detail
        detail: dict[str, Any] = (
            dict(found) if isinstance(found, dict) else {"error": "", "message": str(found)}
        )
        detail["field"] = _segment_field(str(detail.get("field", "")))
        if detail["error"] == "invalid_funnel":
            detail["error"] = "invalid_segment"
        raise HTTPException(400, detail) from exc
    return funnel.steps[0].filters
