"""The install lines in ingest/static/README.md are the ones the browser tests run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _install_lines(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith(("<script>!function", '<script async src="https://'))
    ]


def test_readme_install_is_the_tested_one() -> None:
    readme = _install_lines((ROOT / "ingest/static/README.md").read_text())
    loader = _install_lines((ROOT / "ingest/static/loader.html").read_text())
    tested = _install_lines((ROOT / "tests/browser/fixtures/readme-install.html").read_text())
    assert len(readme) == 2
    assert readme == loader
    assert [line.replace('"wk_..."', '"wk_test"') for line in readme] == tested
