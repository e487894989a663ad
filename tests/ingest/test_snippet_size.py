"""The storefront snippet stays small: a budget every change has to fit in.

The budget is on what a browser downloads: the built file, gzipped. Raise it only with a
reason in the commit that does.
"""

from __future__ import annotations

import gzip
from pathlib import Path

BUILT = Path(__file__).resolve().parents[2] / "ingest" / "static" / "funnelstream.js"
BUDGET_GZIP_BYTES = 4 * 1024


def test_snippet_fits_the_gzip_budget() -> None:
    raw = BUILT.read_bytes()
    size = len(gzip.compress(raw, compresslevel=9))
    assert size <= BUDGET_GZIP_BYTES, (
        f"ingest/static/funnelstream.js is {size} bytes gzipped, over the "
        f"{BUDGET_GZIP_BYTES}-byte budget"
    )


def test_snippet_is_minified_and_licensed() -> None:
    text = BUILT.read_text()
    assert text.startswith("/*! funnelstream.js"), "the license banner survives the build"
    assert "\n" in text.strip() and len(text.strip().splitlines()) <= 3, "built file is minified"
