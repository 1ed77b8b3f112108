"""Settings of SPEC 8 on pydantic-settings. Sources, first wins: the environment, its `_FILE`
secrets, the TOML file named by `RECONCILER_CONFIG`, its `*_file` secrets (relative to it).
Every problem is reported at once, naming the variable (and the TOML key); secrets never show."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, WrapValidator
from pydantic.dataclasses import dataclass
from pydantic.types import StringConstraints
from pydantic_core import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, TomlConfigSettingsSource
from pydantic_settings import PydanticBaseSettingsSource as Source

from reconciler import redaction
from reconciler.model import Mode, Policy
from reconciler.redaction import MASK

ENV_PREFIX = "RECONCILER_"
CONFIG_VARIABLE = "RECONCILER_CONFIG"
DEFAULT_SERVER_NAME = "default"
_POLICY = Policy()
DEFAULT_MANAGED_PATTERN = _POLICY.managed_pattern.pattern
_SECRETS = ("database_url", "redis_url", "evolution_api_key", "webhook_token")
_HIDDEN = frozenset({*_SECRETS, "api_key"})  # keys whose values a message never shows
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"  # one PostgreSQL does not truncate
_IDENTIFIER = f"an SQL identifier matching ^{_NAME}$"
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#]+@")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&](?:ssl)?password=)[^&\s#]+")
_T = TypeVar("_T")


class SettingsError(Exception):
    """Bad settings (exit code 2): one line per problem, each naming where the value came from."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


class _Invalid(ValueError):
    """A value is wrong; the message says what it must be (never what it was, if secret)."""


def _must(requirement: str) -> WrapValidator:
    """Any failure of the inner validation (type, bounds, booleans) is said as `requirement`."""

    def check(value: object, inner: Callable[[object], object]) -> object:
        try:
            if not isinstance(value, bool):  # pydantic would read TOML `true` as the number 1
                return inner(value)
        except ValidationError:
            pass
        raise _Invalid(requirement)

    return WrapValidator(check)


def _check(test: Callable[[str], object] | str, requirement: str) -> AfterValidator:
    """A string failing `test` (a predicate, or a regex it must match in full) is wrong."""
    passes = re.compile(test).fullmatch if isinstance(test, str) else test

    def check(value: str) -> str:
        if not passes(value):
            raise _Invalid(requirement)
        return value

    return AfterValidator(check)


def _regex(value: object, entry: str = "") -> re.Pattern[str]:
    if not isinstance(value, str):
        raise _Invalid("must be a regular expression")
    try:
        return re.compile(value)
    except re.error as e:
        must = (f'must be comma-separated names or regular expressions; "{entry}" is not a valid'
                if entry else "must be a valid")
        raise _Invalid(f"{must} regular expression ({e})") from None


def _protected(value: object) -> tuple[re.Pattern[str], ...]:
    """Plain names match exactly; a brace left open means a comma split a regex like `{2,4}`."""
    entries = value.split(",") if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise _Invalid("must be comma-separated names or regular expressions")
    patterns = []
    for entry in (e.strip() for e in entries if e.strip()):
        if entry.count("{") != entry.count("}"):
            raise _Invalid(f'"{entry}" has unbalanced braces: a comma inside a regular expression'
                           " (as in {2,4}) splits it in two; write the repetition out or list the"
                           " entries as a TOML array")
        plain = re.fullmatch(r"[A-Za-z0-9_-]+", entry)
        patterns.append(re.compile(f"^{entry}$") if plain else _regex(entry, entry))
    return tuple(patterns)


def _has_valid_port(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return True


def _http_url(value: str) -> str:
    """The API key is a setting of its own; a query string would be sent with every path."""
    parts = urlsplit(value)
    if not _has_valid_port(value):
        raise _Invalid("must be an http:// or https:// URL with a valid port")
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        raise _Invalid("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _Invalid("must not contain credentials (the API key is a setting of its own)")
    if "?" in value or "#" in value:
        raise _Invalid("must not have a query string or fragment")
    return value.rstrip("/")


def _redis_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return bool(parts.path)
    return bool(parts.scheme in ("redis", "rediss") and parts.hostname and _has_valid_port(url))


def _address(value: object) -> tuple[str, int]:
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif re.search(r"[][:]", host):
        host = ""
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise _Invalid("must be host:port (an IPv6 host in brackets) with a port 0-65535")
    return (host, int(port))


_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False), _must("must be a number > 0")]
_NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False), _must("must be a number >= 0")]
_Fraction = Annotated[float, Field(gt=0, le=1), _must("must be a fraction in (0, 1]")]
_Secret = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""Mounted secrets and `secretKeyRef`s end in a newline that must not reach the wire."""
_ApiKey = Annotated[_Secret, _check(
    r"[\x20-\x7e]+", "must hold only printable ASCII characters (it is sent as an HTTP header)")]
_Token = Annotated[_Secret, _check(
    r"[A-Za-z0-9._~-]+", "must hold only letters, digits and - . _ ~ (it is part of a URL path)")]
_HttpUrl = Annotated[str, _must("must be an http:// or https:// URL"), AfterValidator(_http_url)]
_Lower = BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value)


@dataclass(frozen=True, config={"extra": "forbid"})
class ServerConfig:
    """One Evolution API server (a `[[servers]]` table of the TOML file)."""

    name: Annotated[str, _check(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
                                "must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    """Names its metrics, logs and decisions; unique."""
    url: _HttpUrl
    """The base URL, without credentials, query string or fragment."""
    api_key: _ApiKey = Field(repr=False)
    """Its global API key (or `api_key_file`), sent as a header."""
    version: Literal["auto", "v1", "v2"] = "auto"
    """"auto" (detect from `GET /` and the responses), "v1" or "v2"."""


class Settings(BaseSettings):
    """Every setting of SPEC 8, validated. Each field is a TOML key and, upper-cased with the
    prefix, a variable; the service URLs are "" only when not required."""

    model_config = {"env_prefix": ENV_PREFIX, "frozen": True, "extra": "forbid",
                    "validate_default": False, "use_attribute_docstrings": True}

    database_url: Annotated[_Secret, _check(lambda url: "://" in url and urlsplit(url).scheme in (
        "postgres", "postgresql"), "must be a postgres:// or postgresql:// URL")] = ""
    """The PostgreSQL DSN (or `RECONCILER_DATABASE_URL_FILE`)."""
    redis_url: Annotated[_Secret, _check(_redis_url, "must be a redis:// or rediss:// URL with a"
                         " host, or a unix:// socket URL")] = ""
    """Redis for hints and events (or `RECONCILER_REDIS_URL_FILE`)."""
    evolution_url: _HttpUrl | None = Field(None, repr=False)
    """The single server, named `default`, when the TOML file lists no `[[servers]]`."""
    evolution_api_key: _ApiKey | None = Field(None, repr=False)
    """Its global API key (or `RECONCILER_EVOLUTION_API_KEY_FILE`)."""
    servers: tuple[ServerConfig, ...] = ()
    """Every server reconciled: the TOML `[[servers]]`, or the single one above."""
    mode: Mode = _POLICY.mode
    """`enforce` acts; `dry_run` only says what it would do (SPEC 4.3)."""
    interval_seconds: _Positive = 30.0
    """Between passes, with +/-10% jitter."""
    managed_pattern: Annotated[re.Pattern[str], BeforeValidator(_regex)] = _POLICY.managed_pattern
    """Instance names the daemon owns; others are never touched (SPEC 3)."""
    protected: Annotated[tuple[re.Pattern[str], ...], NoDecode, BeforeValidator(_protected)] = ()
    """Names or regular expressions never deleted (SPEC 4.3)."""
    orphan_grace_seconds: _NonNegative = _POLICY.orphan_grace.total_seconds()
    """How long an orphan must be seen before its deletion."""
    orphan_confirmations: Annotated[int, Field(ge=1), _must("must be a whole number >= 1")] = (
        _POLICY.orphan_confirmations)
    """Passes that must see an orphan before its deletion."""
    max_deletions: Annotated[int, Field(ge=0), _must("must be a whole number >= 0")] = (
        _POLICY.max_deletions)
    """Blast-radius guard: deletions per pass."""
    max_deletion_fraction: _Fraction = _POLICY.max_deletion_fraction
    """Blast-radius guard: share of a server's instances deleted per pass."""
    disconnect_after_seconds: _NonNegative = _POLICY.disconnect_after.total_seconds()
    """Hysteresis before a disconnect is marked; 0 marks it at first sight (SPEC 4.1)."""
    mass_disconnect_fraction: _Fraction = _POLICY.mass_disconnect_fraction
    """A share of disconnects at once that looks like an outage, not drift (SPEC 4.1)."""
    probe_rps: _Positive = 10.0
    """Per-instance state probes per second, per server (SPEC 3)."""
    probe_interval_seconds: _Positive = 300.0
    """How often an instance's state is probed (SPEC 3)."""
    hint_rps: _Positive = 20.0
    """Targeted reconciles per second, per server: the work queue's rate (SPEC 4.5)."""
    http_timeout_seconds: _Positive = 60.0
    """Per request to Evolution (listing a large server is slow)."""
    shutdown_seconds: _Positive = 10.0
    """From SIGTERM to exit, whatever a server is doing (SPEC 7)."""
    integrations_table: Annotated[str, _check(rf"{_NAME}\.{_NAME}", "must be schema.table, each"
                                  f" part {_IDENTIFIER}")] = "healthcare.integrations"
    """The desired state (SPEC 2)."""
    own_schema: Annotated[str, _check(_NAME, f"must be {_IDENTIFIER}")] = (
        Field("reconciler", validation_alias=AliasChoices("schema", "reconciler_schema")))
    """The daemon's own schema (SPEC 2): `schema` in TOML, `RECONCILER_SCHEMA` (not the name)."""
    events_channel: str = "whatsapp:instance-events"
    """The Redis pub/sub channel of events (SPEC 5)."""
    events_stream: Annotated[str, AfterValidator(lambda v: v or None)] | None = (
        "whatsapp:instance-events:stream")
    """The Redis stream of events, on so that a worker that was down misses nothing (SPEC 5.1);
    "" disables it."""
    http_addr: Annotated[tuple[str, int], NoDecode, BeforeValidator(_address)] = ("0.0.0.0", 9478)
    """Where metrics, health and webhooks listen (SPEC 6)."""
    webhook_token: _Token | None = Field(None, repr=False)
    """The `{token}` of Evolution's webhook URL (SPEC 4.6); None refuses every webhook."""
    log_format: Annotated[Literal["json", "console"], _Lower] | None = None
    """"json", "console", or None: console on a terminal, json otherwise."""
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _Lower] = "info"
    config_file: str | None = Field(None, exclude=True)
    """The TOML file the settings were read from, if any (not a setting)."""
    warnings: tuple[str, ...] = Field((), exclude=True)
    """Problems that do not stop the daemon (unknown RECONCILER_* variables): worth a log line."""

    @property
    def schema(self) -> str:  # type: ignore[override]  # BaseModel.schema is deprecated
        return self.own_schema

    @property
    def http_host(self) -> str:
        return self.http_addr[0]

    @property
    def http_port(self) -> int:
        return self.http_addr[1]

    def policy(self, *, allow_mass_deletion: bool = False, mode: Mode | None = None) -> Policy:
        return Policy(
            mode=self.mode if mode is None else mode, managed_pattern=self.managed_pattern,
            protected=self.protected, orphan_grace=timedelta(seconds=self.orphan_grace_seconds),
            orphan_confirmations=self.orphan_confirmations, max_deletions=self.max_deletions,
            max_deletion_fraction=self.max_deletion_fraction,
            disconnect_after=timedelta(seconds=self.disconnect_after_seconds),
            mass_disconnect_fraction=self.mass_disconnect_fraction,
            allow_mass_deletion=allow_mass_deletion,
        )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, safe_url(value) if name in ("database_url", "redis_url") else value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Source,
                                   env_settings: Source, dotenv_settings: Source,
                                   file_secret_settings: Source) -> tuple[Source, ...]:
        """Only the keywords: `load_settings` reads the sources, as it is given the environment."""
        return (init_settings,)


def safe_url(url: str) -> str:
    """The URL with any password (in the authority or a `password=` parameter) masked."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", masked)


def redact(text: str, settings: Settings | None = None) -> str:
    """Masks every secret of `settings` (as given and URL-encoded) and any password in a URL."""
    found: set[str] = set()
    if settings:
        urls = (settings.database_url, settings.redis_url)
        found = {settings.webhook_token or "", *(s.api_key for s in settings.servers),
                 *(password for url in urls for password in redaction.url_passwords(url))}
    found |= {unquote(s) for s in found} | {quote(s, safe="") for s in found}
    return safe_url(redaction.redact(text, found))


def _variable(key: str) -> str:
    return ENV_PREFIX + key.upper()


_INTERNAL = ("servers", "config_file", "warnings")  # fields that are not settings of their own
_KEYS = ["schema" if name == "own_schema" else name for name in Settings.model_fields
         if name not in _INTERNAL]
_VARIABLES = {_variable(key): key for key in _KEYS}
_KNOWN = {CONFIG_VARIABLE, *_VARIABLES, *(_variable(f"{key}_file") for key in _SECRETS)}
_SAID = {"string_type": "must be a string", "string_too_short": "must not be empty",
         "literal_error": "must be one of {}", "enum": "must be one of {}"}
"""pydantic's errors in the house's words; `{}` is the choices of its `expected`."""
_Found = dict[str, tuple[Any, str] | None]
"""Per key, its value and the place a message names, or None when it failed (already said)."""


class _Environment(EnvSettingsSource):
    """Only the known variables of `environ` (given, so that the demo and tests leave os.environ
    alone): neither `SCHEMA` (an alias) nor `RECONCILER_SERVERS` (not a setting) is read. Empty
    is unset, but for the one setting whose empty value means something: no stream."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self.environ.items()
                if name in _VARIABLES and (value or name == _variable("events_stream"))}


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    """The TOML file; the source skips one it cannot find, so open it first to say why."""
    try:
        path.open("rb").close()
        return TomlConfigSettingsSource(Settings, toml_file=path)()
    except OSError as e:
        problems.append(f"{CONFIG_VARIABLE}: cannot read {path}: {e.strerror or e}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{CONFIG_VARIABLE}: {path} is not valid TOML ({e})")
    return {}


def _read_secret(name: object, base: Path | None) -> str:
    if not isinstance(name, str):
        raise _Invalid(f"must be a file path, got {_show(name)}")
    path = Path(name) if base is None else base / name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _Invalid(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise _Invalid(f"cannot read {path}: {e.strerror or e}") from None
    if not text.strip():
        raise _Invalid(f"{path} is empty")
    return text


def _layer(given: Mapping[str, Any], place: Callable[[str], str], secrets: Collection[str],
           base: Path | None, problems: list[str], done: Collection[str] = ()) -> _Found:
    """A source, each `<secret>_file` in it read (relative to `base`) unless the secret is `done`
    by a source before it; `place` names a key (or a `_file` key) where a message says it."""
    found: _Found = {key: (value, place(key)) for key, value in given.items()
                     if not (key.endswith("_file") and key[:-5] in secrets)}
    for key in secrets:
        name = given.get(f"{key}_file")
        if name in (None, "") or (key in done and key not in given):
            continue
        found[key] = None
        if key in given:
            problems.append(f"{place(key)}, {place(key + '_file')}: both are set; set only one")
            continue
        try:
            found[key] = (_read_secret(name, base), place(key + "_file"))
        except _Invalid as e:
            problems.append(f"{place(key + '_file')}: {e}")
    return found


def load_settings(environ: Mapping[str, str] | None = None, *,
                  require_services: bool = True) -> Settings:
    """Reads and validates every setting; raises `SettingsError` listing every problem."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    path = Path(env.get(CONFIG_VARIABLE) or "")
    doc = _read_config(path, problems) if env.get(CONFIG_VARIABLE) else {}
    files = {f"{key}_file": env.get(_variable(f"{key}_file")) for key in _SECRETS}
    found = _layer(_Environment(env)() | files, _variable, _SECRETS, None, problems)
    problems += [f"{key} (in {path}): unknown setting" for key in _INTERNAL[1:] if key in doc]
    toml = {k: v for k, v in doc.items()
            if k not in _INTERNAL and (v != "" or k == "events_stream")}
    found = _layer(toml, lambda k: f"{_variable(k)} ({k} in {path})", _SECRETS, path.parent,
                   problems, found) | found
    listed = doc.get("servers")
    servers = _servers(listed, path, problems) if listed else ()
    settings = _build(Settings, found, _variable, f"{{}} (in {path}): unknown setting".format,
                      problems, servers=servers or (), config_file=str(path) if doc else None,
                      warnings=tuple(f"{name}: unknown setting, ignored" for name in sorted(env)
                                     if name.startswith(ENV_PREFIX) and name not in _KNOWN))
    url, key = found.get("evolution_url"), found.get("evolution_api_key", ())
    if listed:
        if url:
            problems.append(f"{url[1]}: set while {path} lists [[servers]]")
        if key:
            problems.append(f"{key[1]}: set while {path} lists [[servers]]; give each its api_key")
    elif key and not url:
        problems.append(f"{key[1]}: set without {ENV_PREFIX}EVOLUTION_URL")
    elif url and key == ():
        problems.append(f"{ENV_PREFIX}EVOLUTION_API_KEY: required with {ENV_PREFIX}EVOLUTION_URL"
                        f" (or {ENV_PREFIX}EVOLUTION_API_KEY_FILE)")
    if require_services:
        for name in ("database_url", "redis_url"):
            if name not in found:
                problems.append(f"{_variable(name)}: required (or {_variable(name)}_FILE)")
        if not listed and not url and servers is not None:
            problems.append(f"{ENV_PREFIX}EVOLUTION_URL: required unless the file named by"
                            f" {CONFIG_VARIABLE} lists [[servers]]")
    if problems or settings is None:
        raise SettingsError(problems)
    if settings.evolution_url and settings.evolution_api_key and not listed:
        single = ServerConfig(DEFAULT_SERVER_NAME, settings.evolution_url,
                              settings.evolution_api_key)
        return settings.model_copy(update={"servers": (single,)})
    return settings


def _servers(listed: object, path: Path, problems: list[str]) -> tuple[ServerConfig, ...] | None:
    """The `[[servers]]` tables, each validated on its own to say which it is; None on a problem."""
    if not isinstance(listed, list) or not all(isinstance(s, dict) for s in listed):
        problems.append(f"servers (in {path}): must be a list of [[servers]] tables")
        return None
    count, servers = len(problems), list[ServerConfig]()
    for number, table in enumerate(listed, start=1):
        where = f"of [[servers]] #{number} in {path}"
        found = _layer(table, f"{{}} {where}".format, ("api_key",), path.parent, problems)
        server = _build(ServerConfig, found, f"{{}} {where}".format,
                        f"{{}} {where}: unknown key".format, problems)
        if server is None:
            continue
        for other in servers:
            if server.name == other.name:
                problems.append(f'name {where}: server name "{server.name}" is used twice')
            elif server.url == other.url:
                problems.append(f'url {where}: same URL as server "{other.name}"')
        servers.append(server)
    return tuple(servers) if len(problems) == count else None


def _build(cls: Callable[..., _T], found: _Found, place: Callable[[str], str],
           unknown: Callable[[str], str], problems: list[str], **given: Any) -> _T | None:
    """`cls` of the values found, or None after one problem per key: where it came from, what it
    must be, and what it was unless secret; a key that failed already is not said again."""
    try:
        return cls(**{key: got[0] for key, got in found.items() if got}, **given)
    except ValidationError as error:
        said = {key for key, got in found.items() if got is None}
        for detail in error.errors():
            key, ctx = str(detail["loc"][0]), detail.get("ctx") or {}
            if key in said:
                continue
            said.add(key)
            value, where = found.get(key) or (detail["input"], place(key))
            if detail["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                problems.append(unknown(key))
            elif detail["type"] == "missing":
                either = " (api_key or api_key_file)" if key == "api_key" else ""
                problems.append(f"{where}: required{either}")
            else:
                choices = str(ctx.get("expected")).replace("'", "").replace(" or ", ", ")
                said_as = _SAID.get(detail["type"], "is invalid").format(choices)
                must = ctx["error"] if isinstance(ctx.get("error"), _Invalid) else said_as
                shown = "" if key in _HIDDEN else f", got {_show(value)}"
                problems.append(f"{where}: {must}{shown}")
        return None


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{safe_url(value)}"'
    return str(value).lower() if isinstance(value, bool) else safe_url(repr(value))
