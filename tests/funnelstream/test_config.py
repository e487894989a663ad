"""Project config: keys, placeholder refusal outside local mode, errors that name the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from funnelstream.config import (
    AD_HOC_ENVELOPE_BYTES,
    MIN_KEY_LENGTH_OUTSIDE_LOCAL,
    CommonSettings,
    ConfigError,
    IngestSettings,
    ProcessorSettings,
    Project,
    QueryApiSettings,
    add_missing_admin_keys,
    load_config,
    local_config,
    parse_config,
)
from funnelstream.key_store import KeyStore
from funnelstream.keys import WrongScope
from schemas.funnels import MAX_DEFINITION_BYTES

GOOD_WK = "wk_0123456789abcdef"
GOOD_RK = "rk_0123456789abcdef"


def project(pid: str = "shop", wk: str = GOOD_WK, rk: str = GOOD_RK) -> str:
    return f'[[projects]]\nid = "{pid}"\nwrite_key = "{wk}"\nread_key = "{rk}"\n'


FUNNEL = """
[[funnels]]
id = "checkout"
project = "shop"
steps = [{ event = "view" }, { event = "buy" }]
"""


def error(text: str, mode: str = "local") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, mode)
    return str(info.value)


def test_parses_projects_and_funnels() -> None:
    config = parse_config(
        project() + project("blog", "wk_b" * 5, "rk_b" * 5) + FUNNEL, "production"
    )
    assert [p.id for p in config.projects] == ["shop", "blog"]
    assert config.projects[0].write_key.get_secret_value() == GOOD_WK
    assert GOOD_WK not in repr(config.projects[0])  # SecretStr
    assert [(f.id, f.project, len(f.steps)) for f in config.funnels] == [("checkout", "shop", 2)]


def test_lookup_by_key() -> None:
    config = parse_config(project() + project("blog", "wk_b" * 5, "rk_b" * 5))
    keys = KeyStore.config_only(config)  # how every process looks keys up
    shop = keys.authorize(GOOD_WK, "write")
    assert isinstance(shop, Project) and shop.id == "shop"
    blog = keys.authorize("rk_b" * 5, "read")
    assert isinstance(blog, Project) and blog.id == "blog"
    assert isinstance(keys.authorize(GOOD_RK, "write"), WrongScope)  # a read key
    assert isinstance(keys.authorize(GOOD_WK, "read"), WrongScope)
    assert keys.authorize("", "write") is None


@pytest.mark.parametrize("key", ["changeme", "CHANGEME", "change-me", "secret", "password", "test"])
def test_placeholder_keys_are_refused_outside_local_mode(key: str) -> None:
    assert error(project(wk=key), "production") == (
        "projects[shop].write_key: a placeholder or short key is refused outside local mode "
        f"(need {MIN_KEY_LENGTH_OUTSIDE_LOCAL}+ random characters)"
    )
    assert parse_config(project(wk=key)).projects[0].write_key.get_secret_value() == key


def test_short_keys_are_refused_outside_local_mode_and_name_the_setting() -> None:
    short = "x" * (MIN_KEY_LENGTH_OUTSIDE_LOCAL - 1)
    assert error(project(rk=short), "production").startswith("projects[shop].read_key: ")
    ok = "x" * MIN_KEY_LENGTH_OUTSIDE_LOCAL
    assert parse_config(project(rk=ok), "production").projects[0].read_key.get_secret_value() == ok


def test_empty_key_is_refused_even_locally() -> None:
    assert error(project(wk="")) == "projects[shop].write_key: must not be empty"
    assert error(project(rk="")) == "projects[shop].read_key: must not be empty"


def test_missing_project_setting() -> None:
    assert error('[[projects]]\nid = "a"\nread_key = "r"\n') == "projects[0]: missing write_key"
    assert error(project() + '[[projects]]\nwrite_key = "w"\n') == "projects[1]: missing id"


def test_no_projects() -> None:
    assert error("") == "config defines no [[projects]]"


def test_invalid_toml() -> None:
    assert error("[[projects]\n").startswith("config is not valid TOML: ")


def test_funnel_for_an_unknown_project() -> None:
    text = project() + FUNNEL.replace('project = "shop"', 'project = "other"')
    assert error(text) == "funnels[0].project: unknown project 'other'"


def test_funnel_rule_error_names_field_and_code() -> None:
    text = project() + FUNNEL + FUNNEL.replace("checkout", "c2") + "window_seconds = 0\n"
    assert error(text) == (
        "funnels[1].window_seconds: window_seconds must be between 1 and 7776000 (90 days) "
        "(window_out_of_range)"
    )


def test_funnel_with_a_shapeless_step_is_a_config_error() -> None:
    text = project() + FUNNEL.replace('{ event = "buy" }', "{}")
    assert error(text) == (
        "funnels[0].steps[1]: a step needs either `event` or a non-empty `any_of` (step_shape)"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "9007199254740993"])
def test_funnel_with_a_number_toml_allows_but_funnels_do_not(value: str) -> None:
    # TOML spells NaN and the infinities; a gt bound must be a finite exact Float64.
    step = f'{{ event = "buy", filters = [{{ property = "n", op = "gt", value = {value} }}] }}'
    text = project() + FUNNEL.replace('{ event = "buy" }', step)
    message = error(text)
    assert message.startswith("funnels[0].steps[1].filters[0].value: gt needs a ")
    assert message.endswith("(number_out_of_range)")


def test_funnel_schema_error_names_the_funnel() -> None:
    text = project() + FUNNEL.replace('id = "checkout"', 'id = "has space"')
    message = error(text)
    assert message.startswith("funnels[0]: ")
    assert "id" in message


def test_local_config_creates_a_file_with_random_keys(tmp_path: Path) -> None:
    first = local_config(tmp_path / "a" / "data")
    second = local_config(tmp_path / "b")
    assert first == tmp_path / "a" / "data" / "funnelstream.toml"
    a, b = parse_config(first.read_text()), parse_config(second.read_text())
    keys = [p.write_key.get_secret_value() for p in a.projects + b.projects] + [
        p.read_key.get_secret_value() for p in a.projects + b.projects
    ]
    assert len(set(keys)) == 4
    assert all(re.fullmatch(r"[wr]k_[A-Za-z0-9_\-]{24}", k) for k in keys)
    # Random keys are good enough for production too.
    assert parse_config(first.read_text(), "production").projects[0].id == "demo"
    assert [f.id for f in a.funnels] == ["checkout"]
    assert len(a.funnels[0].steps) == 5


def test_local_config_keeps_an_existing_file(tmp_path: Path) -> None:
    path = local_config(tmp_path)
    before = path.read_text()
    assert local_config(tmp_path) == path
    assert path.read_text() == before


def test_load_config_in_local_mode_writes_the_demo(tmp_path: Path) -> None:
    config = load_config(CommonSettings(mode="local", data_dir=tmp_path, config_file=None))
    assert config.path == tmp_path / "funnelstream.toml"
    assert [p.id for p in config.projects] == ["demo"]


def test_load_config_outside_local_mode_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CommonSettings(mode="production", data_dir=tmp_path, config_file=None))
    assert str(info.value) == "FUNNELSTREAM_CONFIG_FILE is required outside local mode"
    assert not (tmp_path / "funnelstream.toml").exists()


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(CommonSettings(mode="production", config_file=missing))
    assert str(info.value) == f"config_file {missing}: No such file or directory"


def test_load_config_applies_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(project(wk="changeme"))
    assert load_config(CommonSettings(mode="local", config_file=path)).path == path
    with pytest.raises(ConfigError, match=r"^projects\[shop\]\.write_key: "):
        load_config(CommonSettings(mode="production", config_file=path))


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUNNELSTREAM_MODE", "production")
    monkeypatch.setenv("FUNNELSTREAM_MAX_BATCH_EVENTS", "10")
    monkeypatch.setenv("FUNNELSTREAM_LATENESS_SECONDS", "30")
    monkeypatch.setenv("FUNNELSTREAM_DATA_DIR", str(tmp_path))
    ingest = IngestSettings()
    assert (ingest.mode, ingest.max_batch_events) == ("production", 10)
    assert ProcessorSettings().lateness_seconds == 30
    assert ingest.resolved_clickhouse_dsn() == f"chdb://{(tmp_path / 'clickhouse').resolve()}"
    monkeypatch.setenv("FUNNELSTREAM_CLICKHOUSE_DSN", "http://ch:8123")
    assert IngestSettings().resolved_clickhouse_dsn() == "http://ch:8123"


def test_funnels_per_project_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert QueryApiSettings().max_funnels_per_project == 100
    monkeypatch.setenv("FUNNELSTREAM_MAX_FUNNELS_PER_PROJECT", "3")
    assert QueryApiSettings().max_funnels_per_project == 3
    monkeypatch.setenv("FUNNELSTREAM_MAX_FUNNELS_PER_PROJECT", "0")
    with pytest.raises(ValueError, match="max_funnels_per_project"):
        QueryApiSettings()


def test_one_session_gap_for_the_processor_and_the_query_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The processor's sessionizer and live fold, and the query API's reports, read it.
    assert ProcessorSettings().session_gap_seconds == QueryApiSettings().session_gap_seconds
    assert QueryApiSettings().session_gap_seconds == 30 * 60
    monkeypatch.setenv("FUNNELSTREAM_SESSION_GAP_SECONDS", "600")
    assert ProcessorSettings().session_gap_seconds == 600
    assert QueryApiSettings().session_gap_seconds == 600
    monkeypatch.setenv("FUNNELSTREAM_SESSION_GAP_SECONDS", "0")
    with pytest.raises(ValueError, match="session_gap_seconds"):
        QueryApiSettings()


def test_settings_refuse_an_unknown_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNNELSTREAM_MODE", "prod")
    with pytest.raises(ValueError, match="mode"):
        CommonSettings()


def test_missing_admin_keys_are_added_to_the_projects_without_one(tmp_path: Path) -> None:
    path = tmp_path / "funnelstream.toml"
    path.write_text(
        '[[projects]]\nid = "a"\nwrite_key = "wk_a"\nread_key = "rk_a"  # keep\n\n'
        '[[projects]]\nid = "b"\nwrite_key = "wk_b"\nread_key = "rk_b"\nadmin_key = "ak_b"\n'
    )
    assert add_missing_admin_keys(path) == ["a"]
    a, b = parse_config(path.read_text()).projects
    assert a.admin_key is not None and a.admin_key.get_secret_value().startswith("ak_")
    assert b.admin_key is not None and b.admin_key.get_secret_value() == "ak_b"
    assert 'read_key = "rk_a"  # keep\nadmin_key = "ak_' in path.read_text()
    assert add_missing_admin_keys(path) == []


def test_a_config_not_laid_out_as_written_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "funnelstream.toml"
    text = 'projects = [{ id = "a", write_key = "wk_a", read_key = "rk_a" }]\n'
    path.write_text(text)
    assert add_missing_admin_keys(path) == []
    assert path.read_text() == text


def test_limit_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNNELSTREAM_TRUSTED_PROXIES", '["10.0.0.0/8", "::1"]')
    monkeypatch.setenv("FUNNELSTREAM_INGEST_RATE_LIMIT_PER_ADDRESS", "5/second;100/minute")
    monkeypatch.setenv("FUNNELSTREAM_QUERY_RATE_LIMIT_PER_KEY", "")
    ingest, query = IngestSettings(), QueryApiSettings()
    assert [str(n) for n in ingest.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert ingest.ingest_rate_limit_per_address == "5/second;100/minute"
    assert query.query_rate_limit_per_key == ""  # off
    assert query.query_max_body_bytes == MAX_DEFINITION_BYTES + AD_HOC_ENVELOPE_BYTES


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FUNNELSTREAM_TRUSTED_PROXIES", '["not-a-network"]'),
        ("FUNNELSTREAM_QUERY_RATE_LIMIT_PER_ADDRESS", "many/second"),
        ("FUNNELSTREAM_QUERY_RATE_LIMIT_PER_KEY", "0/second"),
        # Below a maximal definition in an ad hoc report: it would refuse valid funnels.
        ("FUNNELSTREAM_QUERY_MAX_BODY_BYTES", str(MAX_DEFINITION_BYTES)),
    ],
)
def test_limit_settings_are_refused_at_startup_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    setting = name.removeprefix("FUNNELSTREAM_").lower()
    with pytest.raises(ValueError, match=setting):
        QueryApiSettings()
