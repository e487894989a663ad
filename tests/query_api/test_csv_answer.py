"""CSV answers (query_api/csv_answer.py): quoting, empty cells for nulls, and text that a
spreadsheet would run as a formula written inert."""

from __future__ import annotations

import csv
import io

from query_api.csv_answer import csv_response


def test_quoting_nulls_and_formulas() -> None:
    response = csv_response(
        ("value", "n", "rate"),
        [('=HYPERLINK("x")', 3, None), ("a,b", -2, -0.5), ("-1", 0, 1.0), ("@x", 1, 0.1)],
        "t",
    )
    assert response.media_type == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="t.csv"'
    rows = list(csv.reader(io.StringIO(bytes(response.body).decode())))
    assert rows == [
        ["value", "n", "rate"],
        ['\'=HYPERLINK("x")', "3", ""],
        ["a,b", "-2", "-0.5"],  # numbers stay numbers, negative ones too
        ["'-1", "0", "1.0"],  # text that looks like one is text
        ["'@x", "1", "0.1"],
    ]
