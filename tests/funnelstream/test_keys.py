"""Keys without servers: the format, the hashing, and what a presented key opens."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from funnelstream.config import Project, ProjectConfig
from funnelstream.keys import (
    SCOPES,
    HashedKey,
    KeyRecord,
    KeyRing,
    WrongScope,
    config_keys,
    generate,
    key_digest,
)

SECRET = b"s" * 32
SHOP = Project("shop", SecretStr("wk_shop"), SecretStr("rk_shop"), SecretStr("ak_shop"))
BLOG = Project("blog", SecretStr("wk_blog"), SecretStr("rk_blog"))
CONFIG = ProjectConfig((SHOP, BLOG), ())


def stored(plaintext: str, project: str, scope: str, *, revoked: bool = False) -> HashedKey:
    record = KeyRecord(
        plaintext[3:15],
        project,
        scope,  # type: ignore[arg-type]
        "",
        "stored",
        datetime.now(UTC),
        datetime.now(UTC) if revoked else None,
    )
    return HashedKey(record, key_digest(SECRET, plaintext))


def test_a_generated_key_names_its_scope_and_id_and_carries_192_random_bits() -> None:
    for scope in SCOPES:
        new = generate(scope)
        prefix = {"write": "wk_", "read": "rk_", "admin": "ak_"}[scope]
        assert re.fullmatch(prefix + new.key_id + r"_[A-Za-z0-9_-]{32}", new.plaintext)
    assert generate("read").plaintext != generate("read").plaintext


def test_a_generated_key_id_is_not_one_already_taken() -> None:
    taken = {generate("read").key_id for _ in range(50)}
    assert generate("read", taken).key_id not in taken


def test_the_digest_depends_on_the_secret() -> None:
    assert key_digest(SECRET, "rk_x") == key_digest(SECRET, "rk_x")
    assert key_digest(SECRET, "rk_x") != key_digest(b"t" * 32, "rk_x")


def test_config_keys_open_their_project_for_their_scope_only() -> None:
    ring = KeyRing(CONFIG, SECRET, config_keys(CONFIG, SECRET))
    assert ring.authorize("rk_shop", "read") is SHOP
    assert ring.authorize("ak_shop", "admin") is SHOP
    assert ring.authorize("wk_blog", "write") is BLOG
    wrong = ring.authorize("rk_shop", "admin")
    assert wrong == WrongScope(SHOP, "read", "admin")
    assert ring.authorize("ak_blog", "admin") is None  # blog has no admin key
    assert ring.authorize("rk_sho", "read") is None


def test_several_keys_per_scope_and_a_revoked_one_opens_nothing() -> None:
    keys = [
        *config_keys(CONFIG, SECRET),
        stored("rk_aaaaaaaaaaaa_new", "shop", "read"),
        stored("rk_bbbbbbbbbbbb_old", "shop", "read", revoked=True),
        stored("ak_cccccccccccc_gone", "gone", "admin"),  # project no longer configured
    ]
    ring = KeyRing(CONFIG, SECRET, keys)
    assert ring.authorize("rk_shop", "read") is SHOP
    assert ring.authorize("rk_aaaaaaaaaaaa_new", "read") is SHOP
    assert ring.authorize("rk_bbbbbbbbbbbb_old", "read") is None
    assert ring.authorize("ak_cccccccccccc_gone", "admin") is None


def test_a_ring_under_another_secret_opens_no_stored_key() -> None:
    ring = KeyRing(CONFIG, b"t" * 32, [stored("rk_aaaaaaaaaaaa_new", "shop", "read")])
    assert ring.authorize("rk_aaaaaaaaaaaa_new", "read") is None


@given(st.text())
def test_any_text_opens_nothing_unless_it_is_a_key_and_never_raises(presented: str) -> None:
    # Non-ASCII, NUL, lone surrogates: hashed like any other text, matched by nothing.
    ring = KeyRing(CONFIG, SECRET, config_keys(CONFIG, SECRET))
    known = {"wk_shop", "rk_shop", "ak_shop", "wk_blog", "rk_blog"}
    for scope in SCOPES:
        found = ring.authorize(presented, scope)
        assert (found is None) == (presented not in known)
