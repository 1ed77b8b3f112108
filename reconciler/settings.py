"""Settings of SPEC section 8: environment variables, an optional TOML file, secrets from files.

Everything is validated before any request is made, and every problem is reported at once, naming
the environment variable (and the TOML key when the value came from the file), so that the command
line can exit 2 with a message an operator can act on. Secret values (API keys, the webhook token,
the database and Redis URLs) never appear in a message or a repr.

Conventions an operator may trip over:

- An empty environment variable (or empty TOML string) counts as unset, so the default applies.
- `RECONCILER_PROTECTED` is a comma-separated list (in TOML also an array of strings). An entry made
  only of letters, digits, `_` and `-` protects exactly that instance name; any other entry is a
  regular expression used as `pattern.search(name)`, so anchor it (`^test-`) to mean a prefix.
- Relative `*_file` paths in the TOML file are relative to that file.
- Every secret loses its surrounding whitespace, wherever it came from: a mounted secret file or a
  Kubernetes `secretKeyRef` often ends in a newline that would otherwise reach the wire.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, quote, unquote, urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from reconciler.model import Mode, Policy

ENV_PREFIX = "RECONCILER_"
CONFIG_VARIABLE = "RECONCILER_CONFIG"
DEFAULT_SERVER_NAME = "default"
DEFAULT_MANAGED_PATTERN = r"^clinic-(?P<org>[0-9a-fA-F-]{36})-(?P<ts>[0-9]+)$"
MASK = "***"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#]+@")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&](?:ssl)?password=)[^&\s#]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")
_URL_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


class SettingsError(Exception):
    """Bad settings (exit code 2): one line per problem, each naming where the value came from."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class ServerConfig:
    """One Evolution API server: a name, a base URL, its global API key, the API line."""

    name: str
    url: str
    api_key: str
    version: str = "auto"
    """"auto" (detect from `GET /` and the responses), "v1" or "v2"."""

    def __repr__(self) -> str:
        return f"ServerConfig(name={self.name!r}, url={self.url!r}, version={self.version!r})"


@dataclass(frozen=True)
class Settings:
    """Every setting of SPEC 8, validated. The service URLs are "" only when not required."""

    database_url: str
    redis_url: str
    servers: tuple[ServerConfig, ...]
    mode: Mode = Mode.DRY_RUN
    interval_seconds: float = 30.0
    managed_pattern: re.Pattern[str] = re.compile(DEFAULT_MANAGED_PATTERN)
    protected: tuple[re.Pattern[str], ...] = ()
    orphan_grace_seconds: float = 300.0
    orphan_confirmations: int = 2
    max_deletions: int = 10
    max_deletion_fraction: float = 0.25
    disconnect_after_seconds: float = 120.0
    mass_disconnect_fraction: float = 0.5
    probe_rps: float = 10.0
    probe_interval_seconds: float = 300.0
    http_timeout_seconds: float = 60.0
    shutdown_seconds: float = 10.0
    """From SIGTERM to exit, whatever a server is doing (SPEC 7)."""
    integrations_table: str = "healthcare.integrations"
    schema: str = "reconciler"
    events_channel: str = "whatsapp:instance-events"
    events_stream: str | None = "whatsapp:instance-events:stream"
    """On by default so that a worker that was down misses nothing (SPEC 5.1); "" disables it."""
    http_host: str = "0.0.0.0"
    http_port: int = 9478
    webhook_token: str | None = None
    """The `{token}` of Evolution's webhook URL (SPEC 4.6); None refuses every webhook."""
    log_format: str | None = None
    """"json", "console", or None: console on a terminal, json otherwise."""
    log_level: str = "info"
    config_file: str | None = None
    """The TOML file the settings were read from, if any."""
    warnings: tuple[str, ...] = ()
    """Problems that do not stop the daemon (unknown RECONCILER_* variables): worth a log line."""

    def policy(self, *, allow_mass_deletion: bool = False, mode: Mode | None = None) -> Policy:
        return Policy(
            mode=self.mode if mode is None else mode,
            managed_pattern=self.managed_pattern,
            protected=self.protected,
            orphan_grace=timedelta(seconds=self.orphan_grace_seconds),
            orphan_confirmations=self.orphan_confirmations,
            max_deletions=self.max_deletions,
            max_deletion_fraction=self.max_deletion_fraction,
            disconnect_after=timedelta(seconds=self.disconnect_after_seconds),
            mass_disconnect_fraction=self.mass_disconnect_fraction,
            allow_mass_deletion=allow_mass_deletion,
        )

    def __repr__(self) -> str:
        def shown(name: str) -> object:
            value = getattr(self, name)
            if name in ("database_url", "redis_url"):
                return safe_url(value)
            return MASK if name == "webhook_token" and value is not None else value

        return f"Settings({', '.join(f'{f.name}={shown(f.name)!r}' for f in fields(self))})"


# --- secrets in text -----------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """The URL with any password (in the authority or a `password=` parameter) masked."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", masked)


def redact(text: str, settings: Settings | None = None) -> str:
    """Masks every secret of `settings` (as given and URL-encoded) and any password in a URL."""
    secrets = _secrets(settings) if settings is not None else set()
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return safe_url(text)


def _secrets(settings: Settings) -> set[str]:
    found = {server.api_key for server in settings.servers}
    if settings.webhook_token is not None:
        found.add(settings.webhook_token)
    for url in (settings.database_url, settings.redis_url):
        found.update(m[0][len(m["head"]) : -1] for m in _URL_PASSWORD.finditer(url))
        found.update(m[0][len(m["head"]) :] for m in _QUERY_PASSWORD.finditer(url))
    variants = {unquote(s) for s in found} | {quote(s, safe="") for s in found}
    return {s for s in found | variants if s}


# --- validators: each raises _Invalid with what the value must be --------------------------------


class _Invalid(ValueError):
    """A value is wrong; the message says what it must be (never what it was, if secret)."""


def _secret(value: object) -> object:
    """Mounted secrets and `secretKeyRef`s end in a newline that must not reach the wire."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    if not value:
        raise _Invalid("must not be empty")
    return value


def _header_value(value: str) -> str:
    """httpx refuses (or crashes on) a header it cannot encode: say so before any request."""
    if not _HEADER_VALUE.fullmatch(value):
        raise _Invalid("must hold only printable ASCII characters (it is sent as an HTTP header)")
    return value


def _url_segment(value: str) -> str:
    """Evolution is given the token inside its webhook URL, where nothing may need encoding."""
    if not _URL_SEGMENT.fullmatch(value):
        raise _Invalid("must hold only letters, digits and - . _ ~ (it is part of a URL path)")
    return value


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _regex(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return re.compile(value)
    except re.error as e:
        raise _Invalid(f"must be a valid regular expression ({e})") from None


def _protected(value: object) -> object:
    entries = value.split(",") if isinstance(value, str) else value
    if not isinstance(entries, list | tuple) or not all(isinstance(e, str) for e in entries):
        return value
    patterns = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        if _PLAIN_NAME.match(entry):
            patterns.append(re.compile(f"^{re.escape(entry)}$"))
            continue
        if entry.count("{") != entry.count("}"):
            raise _Invalid(
                f'"{entry}" has unbalanced braces: a comma inside a regular expression (as in'
                " {2,4}) splits it in two; write the repetition out or list the entries as a"
                " TOML array"
            )
        try:
            patterns.append(re.compile(entry))
        except re.error as e:
            raise _Invalid(
                f'must be comma-separated names or regular expressions; "{entry}" is not a valid'
                f" regular expression ({e})"
            ) from None
    return tuple(patterns)


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise _Invalid(f"must be an SQL identifier matching {_IDENTIFIER.pattern}")
    return value


def _table(value: str) -> str:
    parts = value.split(".")
    if len(parts) != 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise _Invalid(
            f"must be schema.table, each part an SQL identifier matching {_IDENTIFIER.pattern}"
        )
    return value


def _server_name(value: str) -> str:
    if not _SERVER_NAME.match(value):
        raise _Invalid(f"must match {_SERVER_NAME.pattern}")
    return value


def _valid_port(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return True


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if not _valid_port(parts):
        raise _Invalid("must be an http:// or https:// URL with a valid port")
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        raise _Invalid("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _Invalid("must not contain credentials (the API key is a setting of its own)")
    if "?" in value or "#" in value:
        raise _Invalid("must not have a query string or fragment")
    return value.rstrip("/")


def _database_url(value: str) -> str:
    if urlsplit(value).scheme not in ("postgres", "postgresql") or "://" not in value:
        raise _Invalid("must be a postgres:// or postgresql:// URL")
    return value


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme in ("redis", "rediss") and parts.hostname and _valid_port(parts):
        return value
    if parts.scheme == "unix" and parts.path:
        return value
    raise _Invalid("must be a redis:// or rediss:// URL with a host, or a unix:// socket URL")


def _address(value: object) -> object:
    if not isinstance(value, str):
        return value
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        host = ""
    if not host or not _PORT.match(port) or int(port) > 65535:
        raise _Invalid("must be host:port (an IPv6 host in brackets) with a port 0-65535")
    return (host, int(port))


_Positive = Annotated[float, BeforeValidator(_not_bool), Field(gt=0, allow_inf_nan=False)]
_NonNegative = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, allow_inf_nan=False)]
_Fraction = Annotated[float, BeforeValidator(_not_bool), Field(gt=0, le=1)]
_D = Settings(database_url="", redis_url="", servers=())


class _Values(BaseModel):
    """The scalar settings; each key is a TOML key and, upper-cased and prefixed, a variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: Annotated[
        str, BeforeValidator(_secret), AfterValidator(_database_url)
    ] | None = Field(None, description="must be a postgres:// or postgresql:// URL")
    redis_url: Annotated[str, BeforeValidator(_secret), AfterValidator(_redis_url)] | None = Field(
        None, description="must be a redis://, rediss:// or unix:// URL"
    )
    mode: Mode = Field(_D.mode, description="must be one of dry_run, enforce")
    interval_seconds: _Positive = Field(_D.interval_seconds, description="must be a number > 0")
    managed_pattern: Annotated[re.Pattern[str], BeforeValidator(_regex)] = Field(
        _D.managed_pattern, description="must be a regular expression"
    )
    protected: Annotated[tuple[re.Pattern[str], ...], BeforeValidator(_protected)] = Field(
        _D.protected, description="must be comma-separated names or regular expressions"
    )
    orphan_grace_seconds: _NonNegative = Field(
        _D.orphan_grace_seconds, description="must be a number >= 0"
    )
    orphan_confirmations: Annotated[int, BeforeValidator(_not_bool), Field(ge=1)] = Field(
        _D.orphan_confirmations, description="must be a whole number >= 1"
    )
    max_deletions: Annotated[int, BeforeValidator(_not_bool), Field(ge=0)] = Field(
        _D.max_deletions, description="must be a whole number >= 0"
    )
    max_deletion_fraction: _Fraction = Field(
        _D.max_deletion_fraction, description="must be a fraction in (0, 1]"
    )
    disconnect_after_seconds: _NonNegative = Field(
        _D.disconnect_after_seconds, description="must be a number >= 0"
    )
    mass_disconnect_fraction: _Fraction = Field(
        _D.mass_disconnect_fraction, description="must be a fraction in (0, 1]"
    )
    probe_rps: _Positive = Field(_D.probe_rps, description="must be a number > 0")
    probe_interval_seconds: _Positive = Field(
        _D.probe_interval_seconds, description="must be a number > 0"
    )
    http_timeout_seconds: _Positive = Field(
        _D.http_timeout_seconds, description="must be a number > 0"
    )
    shutdown_seconds: _Positive = Field(_D.shutdown_seconds, description="must be a number > 0")
    integrations_table: Annotated[str, AfterValidator(_table)] = Field(
        _D.integrations_table, description="must be schema.table"
    )
    own_schema: Annotated[str, AfterValidator(_identifier)] = Field(
        _D.schema, alias="schema", description="must be an SQL identifier"
    )
    events_channel: str = Field(_D.events_channel, description="must be a string")
    events_stream: str | None = Field(_D.events_stream, description="must be a string")
    webhook_token: Annotated[
        str, BeforeValidator(_secret), AfterValidator(_url_segment)
    ] | None = Field(_D.webhook_token, description="must be a string")
    http_addr: Annotated[tuple[str, int], BeforeValidator(_address)] = Field(
        (_D.http_host, _D.http_port), description="must be host:port"
    )
    log_format: Annotated[Literal["json", "console"], BeforeValidator(_lower)] | None = Field(
        None, description="must be one of json, console"
    )
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)
    ] = Field("info", description="must be one of debug, info, warning, error")


class _Server(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, AfterValidator(_server_name)] = Field(description="must be a string")
    url: Annotated[str, AfterValidator(_http_url)] = Field(description="must be a URL")
    api_key: Annotated[str, BeforeValidator(_secret), AfterValidator(_header_value)] = Field(
        description="must be a string"
    )
    version: Literal["auto", "v1", "v2"] = Field("auto", description="must be one of auto, v1, v2")


_FIELDS = {f.alias or name: f for name, f in _Values.model_fields.items()}
_SERVER_FIELDS = {f.alias or name: f for name, f in _Server.model_fields.items()}
_SECRET_SETTINGS = frozenset({"database_url", "redis_url", "evolution_api_key", "webhook_token"})
_HIDDEN = _SECRET_SETTINGS | {"api_key"}
"""Keys whose values a message never shows."""
_KEYS = (*_FIELDS, "evolution_url", "evolution_api_key")
_TOML_KEYS = frozenset({*_KEYS, *(f"{k}_file" for k in _SECRET_SETTINGS), "servers"})
_SERVER_TOML_KEYS = frozenset({*_SERVER_FIELDS, "api_key_file"})
_ENV_NAMES = frozenset(
    {CONFIG_VARIABLE}
    | {ENV_PREFIX + k.upper() for k in _KEYS}
    | {ENV_PREFIX + k.upper() + "_FILE" for k in _SECRET_SETTINGS}
)


# --- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    value: object
    origin: str
    """Where the value came from, as messages name it: `RECONCILER_MODE (mode in /etc/r.toml)`."""


@dataclass(frozen=True)
class _Toml:
    path: Path
    values: Mapping[str, Any]


@dataclass
class _Problems:
    """Collects every problem, and the keys that already have one (so "required" is not added)."""

    messages: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def add(self, message: str, key: str = "") -> None:
        self.messages.append(message)
        self.keys.add(key)


def load_settings(
    environ: Mapping[str, str] | None = None, *, require_services: bool = True
) -> Settings:
    """Reads and validates every setting; raises `SettingsError` listing every problem."""
    env = os.environ if environ is None else environ
    problems = _Problems()
    doc = _read_config(env, problems)
    found: dict[str, _Found] = {}
    for key in _KEYS:
        try:
            value = _lookup(key, env, doc)
        except _Invalid as e:
            problems.add(str(e), key)
            continue
        if value is not None:
            found[key] = value

    values = _validate_values(found, problems)
    servers = _servers(found, doc, problems)
    if require_services:
        for key in ("database_url", "redis_url"):
            if key not in found and key not in problems.keys:
                name = ENV_PREFIX + key.upper()
                problems.add(f"{name}: required (or {name}_FILE)", key)
        if not servers and "evolution_url" not in found and "servers" not in problems.keys:
            problems.add(
                f"{ENV_PREFIX}EVOLUTION_URL: required unless the file named by {CONFIG_VARIABLE}"
                " lists [[servers]]"
            )
    if problems.messages or values is None:
        raise SettingsError(problems.messages)
    return Settings(
        database_url=values.database_url or "",
        redis_url=values.redis_url or "",
        servers=servers,
        mode=values.mode,
        interval_seconds=values.interval_seconds,
        managed_pattern=values.managed_pattern,
        protected=values.protected,
        orphan_grace_seconds=values.orphan_grace_seconds,
        orphan_confirmations=values.orphan_confirmations,
        max_deletions=values.max_deletions,
        max_deletion_fraction=values.max_deletion_fraction,
        disconnect_after_seconds=values.disconnect_after_seconds,
        mass_disconnect_fraction=values.mass_disconnect_fraction,
        probe_rps=values.probe_rps,
        probe_interval_seconds=values.probe_interval_seconds,
        http_timeout_seconds=values.http_timeout_seconds,
        shutdown_seconds=values.shutdown_seconds,
        integrations_table=values.integrations_table,
        schema=values.own_schema,
        events_channel=values.events_channel,
        events_stream=None if _stream_disabled(env, doc) else values.events_stream,
        webhook_token=values.webhook_token,
        http_host=values.http_addr[0],
        http_port=values.http_addr[1],
        log_format=values.log_format,
        log_level=values.log_level,
        config_file=str(doc.path) if doc is not None else None,
        warnings=tuple(
            f"{name}: unknown setting, ignored"
            for name in sorted(env)
            if name.startswith(ENV_PREFIX) and name not in _ENV_NAMES
        ),
    )


def _stream_disabled(env: Mapping[str, str], doc: _Toml | None) -> bool:
    """An empty `RECONCILER_EVENTS_STREAM` disables the stream (other empty values mean unset)."""
    value = env.get(f"{ENV_PREFIX}EVENTS_STREAM")
    if value is None and doc is not None:
        value = doc.values.get("events_stream")
    return value == ""


def _read_config(env: Mapping[str, str], problems: _Problems) -> _Toml | None:
    name = env.get(CONFIG_VARIABLE)
    if not name:
        return None
    path = Path(name)
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except OSError as e:
        problems.add(f"{CONFIG_VARIABLE}: cannot read {path}: {e.strerror or e}", "config")
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        problems.add(f"{CONFIG_VARIABLE}: {path} is not valid TOML ({e})", "config")
        return None
    for key in values:
        if key not in _TOML_KEYS:
            problems.add(f"{key} (in {path}): unknown setting", key)
    return _Toml(path, values)


def _lookup(key: str, env: Mapping[str, str], doc: _Toml | None) -> _Found | None:
    """One setting: the environment wins over the file; a secret may come from a file."""
    var = ENV_PREFIX + key.upper()
    secret = key in _SECRET_SETTINGS
    from_env = _pick(
        env.get(var),
        env.get(f"{var}_FILE") if secret else None,
        value_origin=var,
        file_origin=f"{var}_FILE",
        base=None,
    )
    if from_env is not None or doc is None:
        return from_env
    return _pick(
        doc.values.get(key),
        doc.values.get(f"{key}_file") if secret else None,
        value_origin=f"{var} ({key} in {doc.path})",
        file_origin=f"{var}_FILE ({key}_file in {doc.path})",
        base=doc.path.parent,
    )


def _pick(
    value: object, file: object, *, value_origin: str, file_origin: str, base: Path | None
) -> _Found | None:
    value = None if value == "" else value
    file = None if file == "" else file
    if value is not None and file is not None:
        raise _Invalid(f"{value_origin}, {file_origin}: both are set; set only one")
    if file is not None:
        return _Found(_read_secret(file, file_origin, base), file_origin)
    return None if value is None else _Found(value, value_origin)


def _read_secret(name: object, origin: str, base: Path | None) -> str:
    """A mounted secret: the file's text (validation trims it)."""
    if not isinstance(name, str):
        raise _Invalid(f"{origin}: must be a file path, got {_show(name)}")
    path = Path(name) if base is None else base / name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _Invalid(f"{origin}: {path} is not UTF-8 text") from None
    except OSError as e:
        raise _Invalid(f"{origin}: cannot read {path}: {e.strerror or e}") from None
    if not text.strip():
        raise _Invalid(f"{origin}: {path} is empty")
    return text


def _validate_values(found: Mapping[str, _Found], problems: _Problems) -> _Values | None:
    raw = {key: f.value for key, f in found.items() if key in _FIELDS}
    try:
        return _Values.model_validate(raw)
    except ValidationError as e:
        for key, message in _messages(e, found, _FIELDS).items():
            problems.add(message, key)
        return None


def _servers(
    found: Mapping[str, _Found], doc: _Toml | None, problems: _Problems
) -> tuple[ServerConfig, ...]:
    url, key = found.get("evolution_url"), found.get("evolution_api_key")
    listed = doc.values.get("servers") if doc is not None else None
    if doc is not None and listed:
        if url is not None:
            problems.add(f"{url.origin}: set while {doc.path} lists [[servers]]", "evolution_url")
        if key is not None:
            problems.add(
                f"{key.origin}: set while {doc.path} lists [[servers]]; give each its api_key",
                "evolution_api_key",
            )
        return _listed_servers(listed, doc, problems)
    if url is None:
        if key is not None:
            problems.add(
                f"{key.origin}: set without {ENV_PREFIX}EVOLUTION_URL", "evolution_api_key"
            )
        return ()
    if key is None:
        if "evolution_api_key" not in problems.keys:
            problems.add(
                f"{ENV_PREFIX}EVOLUTION_API_KEY: required with {ENV_PREFIX}EVOLUTION_URL"
                f" (or {ENV_PREFIX}EVOLUTION_API_KEY_FILE)",
                "evolution_api_key",
            )
        return ()
    server = _server(
        {"name": _Found(DEFAULT_SERVER_NAME, "name"), "url": url, "api_key": key}, problems
    )
    return () if server is None else (server,)


def _listed_servers(listed: object, doc: _Toml, problems: _Problems) -> tuple[ServerConfig, ...]:
    if not isinstance(listed, list) or not all(isinstance(s, dict) for s in listed):
        problems.add(f"servers (in {doc.path}): must be a list of [[servers]] tables", "servers")
        return ()
    servers: list[ServerConfig] = []
    for number, table in enumerate(listed, start=1):
        where = f"of [[servers]] #{number} in {doc.path}"
        entry: dict[str, _Found] = {}
        for key, value in table.items():
            if key not in _SERVER_TOML_KEYS:
                problems.add(f"{key} {where}: unknown key", "servers")
            elif key in _SERVER_FIELDS:
                entry[key] = _Found(value, f"{key} {where}")
        try:
            api_key = _pick(
                table.get("api_key"),
                table.get("api_key_file"),
                value_origin=f"api_key {where}",
                file_origin=f"api_key_file {where}",
                base=doc.path.parent,
            )
        except _Invalid as e:
            problems.add(str(e), "servers")
            continue
        if api_key is None:
            problems.add(f"api_key {where}: required (api_key or api_key_file)", "servers")
            continue
        server = _server({**entry, "api_key": api_key}, problems, where)
        if server is None:
            continue
        for other in servers:
            if server.name == other.name:
                problems.add(f'name {where}: server name "{server.name}" is used twice', "servers")
            elif server.url == other.url:
                problems.add(f'url {where}: same URL as server "{other.name}"', "servers")
        servers.append(server)
    return tuple(servers)


def _server(
    entry: Mapping[str, _Found], problems: _Problems, where: str = ""
) -> ServerConfig | None:
    try:
        server = _Server.model_validate({key: f.value for key, f in entry.items()})
    except ValidationError as e:
        for message in _messages(e, entry, _SERVER_FIELDS, where).values():
            problems.add(message, "servers")
        return None
    return ServerConfig(name=server.name, url=server.url, api_key=server.api_key,
                        version=server.version)


def _messages(
    error: ValidationError,
    found: Mapping[str, _Found],
    described: Mapping[str, FieldInfo],
    where: str = "",
) -> dict[str, str]:
    """One message per key: its origin, what it must be, and what it was unless secret."""
    messages: dict[str, str] = {}
    for detail in error.errors():
        key = str(detail["loc"][0])
        if key in messages:
            continue
        origin = found[key].origin if key in found else f"{key} {where}".rstrip()
        if detail["type"] == "missing":
            messages[key] = f"{origin}: required"
            continue
        message = f"{origin}: {_requirement(detail, described[key].description or 'is invalid')}"
        if key not in _HIDDEN:
            message += f", got {_show(found[key].value)}"
        messages[key] = message
    return messages


def _requirement(detail: ErrorDetails, description: str) -> str:
    cause = (detail.get("ctx") or {}).get("error")
    return str(cause) if isinstance(cause, _Invalid) else description


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{safe_url(value)}"'
    if isinstance(value, bool):
        return str(value).lower()
    return safe_url(repr(value))
