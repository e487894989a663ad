"""`funnelstream keys create|list|revoke` against the real engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from funnelstream import cli
from funnelstream.clickhouse import ClickHouse
from funnelstream.config import CommonSettings, load_config
from funnelstream.key_store import KeyStore, load_secret

pytestmark = pytest.mark.clickhouse

# keys subcommand arguments → (exit code, stdout, stderr)
Run = Callable[..., tuple[int, str, str]]

CONFIG = """
[[projects]]
id = "shop"
write_key = "wk_shop"
read_key = "rk_shop"
"""


@pytest.fixture
def run(
    tmp_path: Path,
    ch: ClickHouse,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    (tmp_path / "c.toml").write_text(CONFIG)
    # The CLI turns its flags into FUNNELSTREAM_* variables: restore them afterwards.
    for name in ("DATA_DIR", "CONFIG_FILE", "CLICKHOUSE_DSN", "LOG_BACKEND", "KAFKA_BOOTSTRAP"):
        # setenv records the variable's state (absent too) for the undo; then unset it.
        monkeypatch.setenv(f"FUNNELSTREAM_{name}", "")
        monkeypatch.delenv(f"FUNNELSTREAM_{name}")
    flags = ["--data-dir", str(tmp_path / "d"), "--config", str(tmp_path / "c.toml")]
    flags += ["--clickhouse-dsn", ch.dsn]

    def call(*args: str) -> tuple[int, str, str]:
        code = cli.main(["keys", *args, *flags])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def store(tmp_path: Path, ch: ClickHouse) -> KeyStore:
    settings = CommonSettings(data_dir=tmp_path / "d", config_file=tmp_path / "c.toml")
    s = KeyStore(load_config(settings), load_secret(settings))
    s.reload_sync(ch)
    return s


def test_create_prints_the_key_once_list_shows_it_revoke_ends_it(
    run: Run, tmp_path: Path, ch: ClickHouse
) -> None:
    code, out, err = run("create", "--project", "shop", "--scope", "read", "--label", "bi tool")
    assert code == 0, err
    key = out.strip()
    assert key.startswith("rk_") and "shown only now" in err
    assert store(tmp_path, ch).authorize(key, "read") is not None

    code, out, _ = run("list", "--project", "shop")
    assert code == 0
    key_id = key[3:].split("_", 1)[0]
    assert key_id in out and "bi tool" in out and "config:shop:read" in out
    assert key not in out

    code, out, _ = run("revoke", key_id)
    assert code == 0 and "revoked" in out
    assert store(tmp_path, ch).authorize(key, "read") is None
    assert run("revoke", "config:shop:read")[0] == 2
    assert run("revoke", "nope")[0] == 1


def test_create_for_an_unknown_project_fails(run: Run) -> None:
    code, out, err = run("create", "--project", "blog", "--scope", "admin")
    assert code == 2 and "unknown project" in err and out == ""
