"""The committed snippet is the build of its source (so Python-only users need no node).

Rebuilds `ingest/static/src/funnelstream.js` with the terser pinned in
`ingest/static/package-lock.json` (`npm ci` on first use) and compares byte for byte.
Skipped where node is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "ingest" / "static"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_built_snippet_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "funnelstream.js"
    subprocess.run(
        ["sh", str(STATIC / "build.sh"), str(out)], check=True, timeout=300, capture_output=True
    )
    assert out.read_bytes() == (STATIC / "funnelstream.js").read_bytes(), (
        "ingest/static/funnelstream.js is stale: run ingest/static/build.sh and commit it"
    )
