"""The key table and each process's copy of it, over the real engine; the server secret."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.config import CommonSettings, ConfigError, Project, ProjectConfig
from funnelstream.key_store import SNAPSHOT_FILE, KeyRefresh, KeyStore, load_secret

SECRET = b"k" * 32
SHOP = Project("shop", SecretStr("wk_shop"), SecretStr("rk_shop"), SecretStr("ak_shop"))
BLOG = Project("blog", SecretStr("wk_blog"), SecretStr("rk_blog"))
CONFIG = ProjectConfig((SHOP, BLOG), ())


@pytest.mark.clickhouse
def test_a_key_created_in_one_store_opens_in_another_after_its_reload(ch: ClickHouse) -> None:
    here, there = KeyStore(CONFIG, SECRET), KeyStore(CONFIG, SECRET)
    new = here.create_sync(ch, "shop", "read", "dashboard")
    assert here.authorize(new.plaintext, "read") is SHOP  # at once where it was made
    assert there.authorize(new.plaintext, "read") is None
    there.reload_sync(ch)
    assert there.authorize(new.plaintext, "read") is SHOP
    [row] = ch.query_rows_sync("SELECT digest, label FROM api_keys")
    assert new.plaintext not in str(row) and row[1] == "dashboard"


@pytest.mark.clickhouse
def test_revoking_one_of_two_keys_leaves_the_other_working(ch: ClickHouse) -> None:
    store = KeyStore(CONFIG, SECRET)
    old = store.create_sync(ch, "shop", "write", "v1")
    new = store.create_sync(ch, "shop", "write", "v2")
    revoked = store.revoke_sync(ch, old.key_id)
    assert revoked is not None and revoked.revoked_at is not None
    other = KeyStore(CONFIG, SECRET)
    other.reload_sync(ch)
    for s in (store, other):
        assert s.authorize(old.plaintext, "write") is None
        assert s.authorize(new.plaintext, "write") is SHOP
        assert s.authorize("wk_shop", "write") is SHOP  # the config key too
    listed = {r.key_id: r for r in other.records("shop")}
    assert listed[old.key_id].revoked_at is not None
    assert listed[new.key_id].revoked_at is None
    assert "config:shop:write" in listed
    # Again: the first revocation stands; another project cannot revoke it.
    assert store.revoke_sync(ch, old.key_id) == revoked
    assert store.revoke_sync(ch, new.key_id, project_id="blog") is None
    assert store.authorize(new.plaintext, "write") is SHOP
    assert store.revoke_sync(ch, "no-such-key") is None


@pytest.mark.clickhouse
def test_a_create_for_an_unknown_project_is_refused(ch: ClickHouse) -> None:
    with pytest.raises(ValueError, match="unknown project"):
        KeyStore(CONFIG, SECRET).create_sync(ch, "nope", "read", "")


@pytest.mark.clickhouse
def test_a_failed_reload_keeps_the_last_keys_and_says_so(ch: ClickHouse) -> None:
    store = KeyStore(CONFIG, SECRET)
    new = KeyStore(CONFIG, SECRET).create_sync(ch, "shop", "read", "")
    store.reload_sync(ch)
    failures = metrics.KEY_REFRESH_FAILURES._value.get()
    # A real connection to a port nobody listens on.
    refresh = KeyRefresh(store, lambda: ClickHouse("http://127.0.0.1:9"), 0.05)

    async def run_briefly() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(refresh.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await task

    asyncio.run(run_briefly())
    problem = store.problem()
    assert problem is not None and "key reload failing" in problem, problem
    assert metrics.KEY_REFRESH_FAILURES._value.get() > failures
    assert store.authorize(new.plaintext, "read") is SHOP
    assert store.authorize("rk_shop", "read") is SHOP
    store.reload_sync(ch)
    assert store.problem() is None


def test_a_closed_port_is_unavailable_not_a_crash() -> None:
    with pytest.raises(ClickHouseUnavailable):
        ClickHouse("http://127.0.0.1:9")


def test_local_mode_generates_the_secret_once_readable_by_the_owner_only(tmp_path: Path) -> None:
    settings = CommonSettings(data_dir=tmp_path / "data")
    first = load_secret(settings)
    assert len(first) >= 32
    assert load_secret(settings) == first
    mode = stat.S_IMODE((tmp_path / "data" / "key_secret").stat().st_mode)
    assert mode == 0o600


def test_outside_local_mode_the_secret_is_required_and_not_a_placeholder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FUNNELSTREAM_KEY_SECRET is required"):
        load_secret(CommonSettings(mode="production", data_dir=tmp_path))
    for weak in ("changeme", "short-secret"):
        with pytest.raises(ConfigError, match="key_secret"):
            load_secret(
                CommonSettings(mode="production", data_dir=tmp_path, key_secret=SecretStr(weak))
            )
    good = "x" * 40
    settings = CommonSettings(mode="production", data_dir=tmp_path, key_secret=SecretStr(good))
    assert load_secret(settings) == good.encode()
    assert not (tmp_path / "key_secret").exists()


@pytest.mark.clickhouse
def test_the_snapshot_carries_creates_and_revocations_to_a_store_without_clickhouse(
    ch: ClickHouse, tmp_path: Path
) -> None:
    owner, ingest = KeyStore(CONFIG, SECRET), KeyStore(CONFIG, SECRET)
    owner.snapshot_path = path = tmp_path / SNAPSHOT_FILE
    new = owner.create_sync(ch, "shop", "write", "site")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert new.plaintext not in path.read_text()  # digests only
    ingest.reload_from_snapshot(path, stale_after=60)
    assert ingest.authorize(new.plaintext, "write") is SHOP
    assert ingest.problem() is None
    owner.revoke_sync(ch, new.key_id)
    ingest.reload_from_snapshot(path, stale_after=60)
    assert ingest.authorize(new.plaintext, "write") is None
    assert ingest.authorize("wk_shop", "write") is SHOP
    assert {r.key_id: r.revoked_at is not None for r in ingest.records("shop")}[new.key_id]


@pytest.mark.clickhouse
def test_a_missing_or_stale_snapshot_keeps_the_last_keys_and_says_so(
    ch: ClickHouse, tmp_path: Path
) -> None:
    owner, ingest = KeyStore(CONFIG, SECRET), KeyStore(CONFIG, SECRET)
    path = tmp_path / SNAPSHOT_FILE
    ingest.reload_from_snapshot(path, stale_after=60)
    assert "key snapshot" in (ingest.problem() or "")
    owner.snapshot_path = path
    new = owner.create_sync(ch, "shop", "write", "site")
    ingest.reload_from_snapshot(path, stale_after=60)
    assert ingest.problem() is None
    path.write_text("{")
    ingest.reload_from_snapshot(path, stale_after=60)
    assert "key reload failing" in (ingest.problem() or "")
    assert ingest.authorize(new.plaintext, "write") is SHOP  # the last keys stay
    owner.reload_sync(ch)  # rewrites it
    ingest.reload_from_snapshot(path, stale_after=0)
    assert "old" in (ingest.problem() or "")
