"""Projects, keys and funnels from a TOML file; settings from the environment.

One typed settings class per service (`IngestSettings`, `ProcessorSettings`,
`QueryApiSettings`), all sharing `CommonSettings`, validated at startup. Keys are
`SecretStr`. In local mode (`funnelstream serve` with no config) a demo project with fresh
random keys is written to the data directory; outside local mode a config with a
placeholder or short key is refused. Which project a presented key opens is decided in
one place, funnelstream/keys.py (keys hashed, several per scope, reloaded from ClickHouse).
"""

from __future__ import annotations

import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from funnelstream.cluster_schema import CLUSTER_NAME
from funnelstream.faults import FaultPlan
from funnelstream.ratelimit import parse_rate_limit
from schemas.funnels import MAX_DEFINITION_BYTES, FunnelDefinition, validate_funnel

PLACEHOLDER_KEYS = frozenset({"changeme", "change-me", "secret", "password", "test", ""})
MIN_KEY_LENGTH_OUTSIDE_LOCAL = 16


def _rate_limit_text(text: str) -> str:
    parse_rate_limit(text)  # ValueError names the text: refused at startup
    return text


# A rate limit as `limits` writes it ("100/second", "100/second;3000/minute"); "" is off.
RateLimitText = Annotated[str, AfterValidator(_rate_limit_text)]
# What an ad hoc report's body adds around a definition (`{"funnel": ..., "from": ...}`).
AD_HOC_ENVELOPE_BYTES = 4 * 1024


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELSTREAM_", extra="ignore")

    mode: Literal["local", "production"] = "local"
    data_dir: Path = Path("./funnelstream-data")
    config_file: Path | None = None
    log_backend: Literal["embedded", "kafka"] = "embedded"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic: str = "events"
    partitions: int = 8
    clickhouse_dsn: str = ""
    # A ClickHouse cluster, by its name in the servers' `remote_servers`: migrations are
    # applied ON CLUSTER as replicated tables (funnelstream/cluster_schema.py). Empty: one
    # server, or the embedded engine.
    clickhouse_cluster: str = Field(default="", pattern=rf"^(?:{CLUSTER_NAME})?$")
    # Where a visitor's session ends: the sessionizer, the live fold of `count_by:
    # "session"` funnels and their reports all split sessions at this one gap, so it is
    # common to the processor and the query API.
    session_gap_seconds: int = Field(default=30 * 60, ge=1)
    # Origins whose pages may call the query API cross-origin (funnelstream/cors.py);
    # ingest is open to every origin. Empty: same-origin pages and non-browser clients.
    query_cors_origins: tuple[str, ...] = ()
    # API keys (funnelstream/keys.py): the HMAC secret stored key digests are made with,
    # the same in every process sharing one ClickHouse. Local mode: generated once into
    # <data_dir>/key_secret when unset; required outside local mode.
    key_secret: SecretStr | None = None
    # How often every process reloads the stored keys: a revoked key stops working
    # everywhere within this bound (while ClickHouse answers).
    key_refresh_seconds: float = Field(default=5.0, gt=0)
    # Proxies (addresses or networks) whose X-Forwarded-For is believed when they are the
    # socket peer: per-address rate limits then count the client they forwarded for
    # (funnelstream/client_address.py). Empty: the peer is the client, the header ignored.
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()
    # Days a project's rows are kept when its config says nothing (funnelstream/retention.py);
    # 0 keeps them forever, so an upgrade never deletes history nobody asked to delete.
    retention_days: int = Field(default=0, ge=0, le=36500)
    # Test only: a fault plan file (funnelstream/faults.py) that makes ClickHouse calls and
    # embedded log writes fail on purpose. Refused unless `test_faults_allowed` is set as
    # well, and always in production mode: a stray variable must not break a deployment.
    test_faults: Path | None = None
    test_faults_allowed: bool = False

    @model_validator(mode="after")
    def _test_faults_only_in_tests(self) -> CommonSettings:
        if self.test_faults is not None and (
            not self.test_faults_allowed or self.mode == "production"
        ):
            raise ValueError(
                "test_faults injects failures on purpose: refused unless "
                "FUNNELSTREAM_TEST_FAULTS_ALLOWED=1 is set too, and always in production mode"
            )
        return self

    def resolved_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    def fault_plan(self) -> FaultPlan | None:
        """The test-only fault plan, if one is set (validated above)."""
        return None if self.test_faults is None else FaultPlan(self.test_faults)


class IngestSettings(CommonSettings):
    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 1000
    # Events waiting for the log at once; beyond this ingest answers 503 + Retry-After.
    max_pending_events: int = 50_000
    retry_after_seconds: int = 2
    # Bot reasons (ingest/useragent.py) whose requests are dropped, counted per reason.
    # "http_client" and "empty_user_agent" are left out: server-side senders use them.
    drop_bot_reasons: frozenset[str] = frozenset({"known_bot", "headless_browser"})
    # Request headers a CDN or proxy in front of ingest sets to the visitor's ISO 3166
    # country code, tried in order (no GeoIP database ships with us). Empty: no country.
    # Clients can set these headers too, so behind no CDN a country is only a hint.
    country_headers: tuple[str, ...] = (
        "cf-ipcountry",
        "cloudfront-viewer-country",
        "x-vercel-ip-country",
        "x-country-code",
    )
    # Requests per window (docs/limits.md). Per address is what protects ingest: a write
    # key is public and shared by every browser of a shop, so its limit is only a ceiling
    # per project, counted in each process (N replicas: up to N times).
    ingest_rate_limit_per_address: RateLimitText = "500/second"
    ingest_rate_limit_per_key: RateLimitText = "50000/second"


class ProcessorSettings(CommonSettings):
    group: str = "funnelstream-processor"
    lateness_seconds: int = 10 * 60
    # Large batches, few inserts: processor/pipeline.py's ProcessorConfig says why.
    batch_max_messages: int = 20000
    batch_max_seconds: float = 1.0
    # How old a batch is written once the log is drained (at most batch_max_seconds).
    batch_idle_seconds: float = Field(default=0.25, gt=0)
    # The shared backoff (funnelstream/backoff.py): ClickHouse and log retries, and the
    # restarts of crashed background tasks. Doubles from the first to the second.
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 10.0
    # Visitors per chunk of a new funnel's backfill (processor/backfills.py): one chunk is
    # read, folded and written per loop turn, between live batches.
    backfill_chunk_visitors: int = Field(default=2000, ge=1)
    # Saved funnels per project exported as funnel metrics, in catalog order; the series
    # this bounds are counted in docs/metrics.md.
    metrics_funnels_per_project: int = Field(default=50, ge=0)
    # Consumer group members this process runs, each its own Kafka consumer holding the
    # fold state of its partitions (funnelstream/processor_members.py, docs/scaling.md).
    # More than one only on Kafka: the embedded log has one member per group.
    processor_members: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _members_need_kafka(self) -> ProcessorSettings:
        if self.processor_members > 1 and self.log_backend != "kafka":
            raise ValueError(
                "processor_members > 1 needs log_backend kafka: the embedded log has one "
                "consumer per group"
            )
        return self


class QueryApiSettings(CommonSettings):
    # Reads session_gap_seconds (common): reports split sessions where the processor does.
    # Active funnels (config ones included, archived ones not) one project may hold;
    # replacing one is always allowed. Every active funnel is advanced live for every
    # event, so this bounds that work.
    max_funnels_per_project: int = Field(default=100, ge=1)
    # Active keys created through the API per project (config file keys aside): the key
    # table every process reloads stays small.
    max_keys_per_project: int = Field(default=50, ge=1)
    # Any query API request's body. At least a maximal definition plus an ad hoc report's
    # envelope, so the cap never refuses a definition the validator accepts.
    query_max_body_bytes: int = MAX_DEFINITION_BYTES + AD_HOC_ENVELOPE_BYTES
    # Requests per window per client address, and per bearer key (docs/limits.md).
    query_rate_limit_per_address: RateLimitText = "100/second"
    query_rate_limit_per_key: RateLimitText = "100/second"

    @model_validator(mode="after")
    def _body_cap_fits_a_definition(self) -> QueryApiSettings:
        least = MAX_DEFINITION_BYTES + AD_HOC_ENVELOPE_BYTES
        if self.query_max_body_bytes < least:
            raise ValueError(
                f"query_max_body_bytes must be at least {least}: a maximal funnel definition "
                f"({MAX_DEFINITION_BYTES} bytes) in an ad hoc report's body"
            )
        return self


class LogSettings(BaseSettings):
    """How every process writes its log lines (funnelstream/logs.py); read before any other
    setting, so a configuration error is logged in the format asked for."""

    model_config = SettingsConfigDict(env_prefix="FUNNELSTREAM_", extra="ignore")

    # "json": one object per line (services' default); "text": for people (the command-line
    # tools' default). None: the command's default. `--log-format` overrides it.
    log_format: Literal["json", "text"] | None = None
    # One line per HTTP request (method, path, status, duration, request id): off by
    # default, as ingest answers thousands of requests a second.
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    write_key: SecretStr
    read_key: SecretStr
    # Funnel definitions, keys, erasure. None: the project has no admin key in the file.
    admin_key: SecretStr | None = None
    # Days its rows are kept (0: forever); None: the `retention_days` setting.
    retention_days: int | None = None


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    projects: tuple[Project, ...]
    funnels: tuple[FunnelDefinition, ...]
    path: Path | None = None


def _check_key(project: str, name: str, key: str, mode: str) -> None:
    if mode == "local":
        if not key:
            raise ConfigError(f"projects[{project}].{name}: must not be empty")
        return
    if key.lower() in PLACEHOLDER_KEYS or len(key) < MIN_KEY_LENGTH_OUTSIDE_LOCAL:
        raise ConfigError(
            f"projects[{project}].{name}: a placeholder or short key is refused outside "
            f"local mode (need {MIN_KEY_LENGTH_OUTSIDE_LOCAL}+ random characters)"
        )


def _retention_days(project: str, raw: object) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 36500:
        raise ConfigError(
            f"projects[{project}].retention_days: must be a whole number of days, 0 "
            "(forever) to 36500"
        )
    return raw


def parse_config(text: str, mode: str = "local", path: Path | None = None) -> ProjectConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config is not valid TOML: {exc}") from exc
    projects = []
    for i, raw in enumerate(doc.get("projects", [])):
        try:
            pid = str(raw["id"])
            wk, rk = str(raw["write_key"]), str(raw["read_key"])
        except KeyError as exc:
            raise ConfigError(f"projects[{i}]: missing {exc.args[0]}") from exc
        ak = str(raw["admin_key"]) if "admin_key" in raw else None
        _check_key(pid, "write_key", wk, mode)
        _check_key(pid, "read_key", rk, mode)
        if ak is not None:
            _check_key(pid, "admin_key", ak, mode)
        projects.append(
            Project(
                pid,
                SecretStr(wk),
                SecretStr(rk),
                SecretStr(ak) if ak else None,
                _retention_days(pid, raw.get("retention_days")),
            )
        )
    if not projects:
        raise ConfigError("config defines no [[projects]]")
    seen_ids: set[str] = set()
    seen_keys: set[str] = set()
    for p in projects:
        if p.id in seen_ids:
            raise ConfigError(f"projects[{p.id}]: duplicate project id")
        seen_ids.add(p.id)
        named = [("write_key", p.write_key), ("read_key", p.read_key)]
        if p.admin_key is not None:
            named.append(("admin_key", p.admin_key))
        for name, key in named:
            if key.get_secret_value() in seen_keys:
                raise ConfigError(f"projects[{p.id}].{name}: key is used twice")
            seen_keys.add(key.get_secret_value())
    known = {p.id for p in projects}
    funnels = []
    for i, raw in enumerate(doc.get("funnels", [])):
        try:
            funnel = FunnelDefinition.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"funnels[{i}]: {exc}") from exc
        problems = validate_funnel(funnel)
        if problems:
            first = problems[0]
            raise ConfigError(f"funnels[{i}].{first.field}: {first.message} ({first.code})")
        if funnel.project not in known:
            raise ConfigError(f"funnels[{i}].project: unknown project {funnel.project!r}")
        funnels.append(funnel)
    return ProjectConfig(tuple(projects), tuple(funnels), path)


DEMO_FUNNEL = """
[[funnels]]
id = "checkout"
project = "demo"
name = "Storefront checkout"
window_seconds = 86400
steps = [
  { event = "page_view" },
  { event = "product_view" },
  { event = "add_to_cart" },
  { event = "checkout_started" },
  { event = "purchase" },
]
"""


def local_config(data_dir: Path) -> Path:
    """The data directory's config, created with a demo project and fresh keys if absent."""
    path = data_dir / "funnelstream.toml"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Written by `funnelstream serve` on first start. Keys are random; keep them.\n"
            "[[projects]]\n"
            'id = "demo"\n'
            f'write_key = "wk_{secrets.token_urlsafe(18)}"\n'
            f'read_key = "rk_{secrets.token_urlsafe(18)}"\n'
            f'admin_key = "ak_{secrets.token_urlsafe(18)}"\n' + DEMO_FUNNEL
        )
    else:
        add_missing_admin_keys(path)
    return path


def add_missing_admin_keys(path: Path) -> list[str]:
    """Give every project of a data directory's config an admin key if it has none: the
    previous release wrote the demo project without one. The line goes right after the
    project's read_key line, the file is replaced whole, and nothing else changes.
    Returns the projects that got one."""
    text = path.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return []  # load_config says what is wrong with it
    missing = {
        str(raw.get("id"))
        for raw in doc.get("projects", [])
        if isinstance(raw, dict) and "admin_key" not in raw
    }
    if not missing:
        return []
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    in_project = False
    added: list[str] = []
    block: list[str] = []

    def flush() -> None:
        # One [[projects]] table's lines: its id decides whether it needs a key.
        ids = [tomllib.loads(line).get("id") for line in block if _is_assignment(line, "id")]
        needs = bool(ids) and str(ids[0]) in missing
        for line in block:
            out.append(line)
            if needs and _is_assignment(line, "read_key"):
                out.append(f'admin_key = "ak_{secrets.token_urlsafe(18)}"\n')
                added.append(str(ids[0]))
        block.clear()

    for line in lines:
        header = line.strip()
        if header.startswith("["):
            if in_project:
                flush()
            in_project = header.replace(" ", "") == "[[projects]]"
        (block if in_project else out).append(line)
    if in_project:
        flush()
    migrated = "".join(out)
    if not migrated.endswith("\n") or sorted(added) != sorted(missing):
        # Not laid out as we write it (a key on one line after `read_key`): leave the file
        # as the user keeps it; those projects go on without an admin key.
        return []
    try:
        if any(p.admin_key is None for p in parse_config(migrated).projects):
            return []
    except ConfigError:
        return []  # load_config says what is wrong with the file as it is
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(migrated)
    tmp.chmod(path.stat().st_mode & 0o777)
    tmp.replace(path)
    return added


def _is_assignment(line: str, name: str) -> bool:
    head = line.split("=", 1)[0].strip()
    if head != name or "=" not in line:
        return False
    try:
        return name in tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return False


def load_config(settings: CommonSettings) -> ProjectConfig:
    path = settings.config_file
    if path is None:
        if settings.mode != "local":
            raise ConfigError("FUNNELSTREAM_CONFIG_FILE is required outside local mode")
        path = local_config(settings.data_dir)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config_file {path}: {exc.strerror}") from exc
    return parse_config(text, settings.mode, Path(path))
