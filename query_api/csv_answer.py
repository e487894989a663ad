"""CSV answers for analysts: a report route asked with `Accept: text/csv` answers one flat
table (a header row, then one row per line of the report) instead of JSON.

Cells are written by Python's csv module (RFC 4180 quoting). A text cell starting with
`=`, `+`, `-`, `@`, tab or carriage return gets a leading `'`, so a spreadsheet opening
the file never runs a property value sent by a visitor as a formula; numbers are written
as they are, times in ISO 8601. A missing value (null) is an empty cell.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from fastapi import Request, Response

MEDIA_TYPE = "text/csv"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# For a route's `responses=`: the 200 answer's CSV form in the OpenAPI document.
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
        "description": "The report as JSON, or as CSV with `Accept: text/csv`",
    }
}


def wants_csv(request: Request) -> bool:
    return MEDIA_TYPE in request.headers.get("accept", "").lower()


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_lines(rows: Iterable[Sequence[object]]) -> str:
    """Rows as CSV text, each cell as above (the board's export streams pages of these)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue()


def csv_response(
    header: Sequence[str], rows: Iterable[Sequence[object]], filename: str
) -> Response:
    return Response(
        csv_lines([header]) + csv_lines(rows),
        media_type=f"{MEDIA_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
    )


def _flat(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects become dotted columns (`time_to_convert.median_from_start`)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def records_response(
    records: Sequence[Mapping[str, Any]], header: Sequence[str], filename: str
) -> Response:
    """One row per record (a report's lines as dumped JSON), columns `header` in order;
    nested objects are read by dotted name and a missing one is an empty cell (a step
    nobody reached has no times)."""
    flat = [_flat(r) for r in records]
    return csv_response(header, ([r.get(h) for h in header] for r in flat), filename)
