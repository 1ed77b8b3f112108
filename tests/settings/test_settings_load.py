"""Loading settings (SPEC 8): defaults, environment over TOML, secrets from files, validation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.model import Mode, Policy
from reconciler.settings import (
    DEFAULT_MANAGED_PATTERN,
    ServerConfig,
    Settings,
    SettingsError,
    load_settings,
)

DB = "postgresql://app:db-pass-1@db.example:5432/app"
REDIS = "redis://:redis-pass-1@cache.example:6379/0"
KEY = "evolution-key-1"
BASE = {
    "RECONCILER_DATABASE_URL": DB,
    "RECONCILER_REDIS_URL": REDIS,
    "RECONCILER_EVOLUTION_URL": "https://evo.example",
    "RECONCILER_EVOLUTION_API_KEY": KEY,
}


def load(**env: str) -> Settings:
    return load_settings({**BASE, **env})


def error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- defaults --------------------------------------------------------------------------------


def test_defaults_are_those_of_the_spec() -> None:
    s = load()
    assert (s.database_url, s.redis_url) == (DB, REDIS)
    assert s.servers == (ServerConfig("default", "https://evo.example", KEY, "auto"),)
    assert s.mode is Mode.DRY_RUN
    assert s.interval_seconds == 30
    assert s.managed_pattern.pattern == DEFAULT_MANAGED_PATTERN
    assert s.managed_pattern.pattern == r"^clinic-(?P<org>[0-9a-fA-F-]{36})-(?P<ts>[0-9]+)$"
    assert s.protected == ()
    assert (s.orphan_grace_seconds, s.orphan_confirmations) == (300, 2)
    assert (s.max_deletions, s.max_deletion_fraction) == (10, 0.25)
    assert (s.disconnect_after_seconds, s.mass_disconnect_fraction) == (120, 0.5)
    assert (s.probe_rps, s.probe_interval_seconds) == (10, 300)
    assert s.http_timeout_seconds == 60
    assert s.shutdown_seconds == 10
    assert s.webhook_token is None
    assert (s.integrations_table, s.schema) == ("healthcare.integrations", "reconciler")
    assert (s.events_channel, s.events_stream) == ("whatsapp:instance-events",
                                                   "whatsapp:instance-events:stream")
    assert (s.http_host, s.http_port) == ("0.0.0.0", 9478)
    assert (s.log_format, s.log_level) == (None, "info")
    assert s.config_file is None
    assert s.warnings == ()


def test_default_policy_is_the_model_default() -> None:
    assert load().policy() == Policy()


def test_policy_carries_the_settings_and_the_overrides() -> None:
    s = load(RECONCILER_MODE="enforce", RECONCILER_ORPHAN_GRACE_SECONDS="1.5",
             RECONCILER_DISCONNECT_AFTER_SECONDS="7", RECONCILER_MAX_DELETIONS="3",
             RECONCILER_PROTECTED="keep-me")
    policy = s.policy()
    assert policy.mode is Mode.ENFORCE
    assert policy.orphan_grace == timedelta(seconds=1.5)
    assert policy.disconnect_after == timedelta(seconds=7)
    assert policy.max_deletions == 3
    assert policy.protected == s.protected
    assert not policy.allow_mass_deletion
    overridden = s.policy(allow_mass_deletion=True, mode=Mode.DRY_RUN)
    assert overridden.allow_mass_deletion
    assert overridden.mode is Mode.DRY_RUN


def test_disconnect_after_zero_means_no_hysteresis() -> None:
    assert load(RECONCILER_DISCONNECT_AFTER_SECONDS="0").policy().disconnect_after == timedelta(0)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECONCILER_MODE", "enforce")
    assert load_settings().mode is Mode.ENFORCE


def test_without_services_nothing_is_required() -> None:
    s = load_settings({}, require_services=False)
    assert (s.database_url, s.redis_url, s.servers) == ("", "", ())


def test_empty_variables_count_as_unset() -> None:
    s = load(RECONCILER_MODE="", RECONCILER_PROTECTED="")
    assert (s.mode, s.protected) == (Mode.DRY_RUN, ())


def test_an_empty_stream_setting_disables_the_stream(tmp_path: Path) -> None:
    assert load(RECONCILER_EVENTS_STREAM="").events_stream is None
    config = write(tmp_path / "r.toml", 'events_stream = ""\n')
    assert load(RECONCILER_CONFIG=config).events_stream is None
    assert load(RECONCILER_CONFIG=config, RECONCILER_EVENTS_STREAM="s").events_stream == "s"


def test_unknown_variables_are_ignored_with_a_warning() -> None:
    s = load(RECONCILER_MAX_DELETION="5", RECONCILER_SOMETHING="x", OTHER_THING="y")
    assert s.max_deletions == 10
    assert s.warnings == ("RECONCILER_MAX_DELETION: unknown setting, ignored",
                          "RECONCILER_SOMETHING: unknown setting, ignored")


# --- good values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("RECONCILER_MODE", "enforce", "mode", Mode.ENFORCE),
        ("RECONCILER_INTERVAL_SECONDS", "2.5", "interval_seconds", 2.5),
        ("RECONCILER_ORPHAN_GRACE_SECONDS", "0", "orphan_grace_seconds", 0),
        ("RECONCILER_DISCONNECT_AFTER_SECONDS", "0", "disconnect_after_seconds", 0),
        ("RECONCILER_SHUTDOWN_SECONDS", "2.5", "shutdown_seconds", 2.5),
        ("RECONCILER_ORPHAN_CONFIRMATIONS", "1", "orphan_confirmations", 1),
        ("RECONCILER_MAX_DELETIONS", "0", "max_deletions", 0),
        ("RECONCILER_MAX_DELETION_FRACTION", "1", "max_deletion_fraction", 1.0),
        ("RECONCILER_MASS_DISCONNECT_FRACTION", "0.01", "mass_disconnect_fraction", 0.01),
        ("RECONCILER_PROBE_RPS", "0.5", "probe_rps", 0.5),
        ("RECONCILER_PROBE_INTERVAL_SECONDS", "60", "probe_interval_seconds", 60),
        ("RECONCILER_HTTP_TIMEOUT_SECONDS", "5", "http_timeout_seconds", 5),
        ("RECONCILER_INTEGRATIONS_TABLE", "hc_1.Integrations", "integrations_table",
         "hc_1.Integrations"),
        ("RECONCILER_SCHEMA", "_rec2", "schema", "_rec2"),
        ("RECONCILER_EVENTS_CHANNEL", "events", "events_channel", "events"),
        ("RECONCILER_EVENTS_STREAM", "whatsapp:stream", "events_stream", "whatsapp:stream"),
        ("RECONCILER_LOG_FORMAT", "console", "log_format", "console"),
        ("RECONCILER_LOG_FORMAT", "JSON", "log_format", "json"),
        ("RECONCILER_LOG_LEVEL", "WARNING", "log_level", "warning"),
        ("RECONCILER_DATABASE_URL", "postgres://u@h/d", "database_url", "postgres://u@h/d"),
        ("RECONCILER_DATABASE_URL", "postgresql://postgres:@/postgres?host=/tmp/pg",
         "database_url", "postgresql://postgres:@/postgres?host=/tmp/pg"),
        ("RECONCILER_REDIS_URL", "rediss://cache:6380", "redis_url", "rediss://cache:6380"),
        ("RECONCILER_REDIS_URL", "unix:///tmp/redis.sock", "redis_url", "unix:///tmp/redis.sock"),
    ],
)
def test_accepts(name: str, value: str, attribute: str, expected: object) -> None:
    assert getattr(load(**{name: value}), attribute) == expected


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [("127.0.0.1:8000", "127.0.0.1", 8000), ("[::]:9478", "::", 9478),
     ("[::1]:0", "::1", 0), ("metrics.local:65535", "metrics.local", 65535)],
)
def test_http_addr(value: str, host: str, port: int) -> None:
    s = load(RECONCILER_HTTP_ADDR=value)
    assert (s.http_host, s.http_port) == (host, port)


def test_evolution_url_loses_its_trailing_slash() -> None:
    assert load(RECONCILER_EVOLUTION_URL="http://evo:8080/api/").servers[0].url == (
        "http://evo:8080/api")


def test_managed_pattern_is_compiled() -> None:
    s = load(RECONCILER_MANAGED_PATTERN=r"^wa-(?P<org>\w+)$")
    assert s.managed_pattern.search("wa-abc")


def test_protected_plain_names_match_exactly_and_regexes_search() -> None:
    s = load(RECONCILER_PROTECTED=" vip-clinic , ,^test-,demo.[0-9]+$,")
    plain, prefix, regex = s.protected
    assert plain.search("vip-clinic")
    assert not plain.search("vip-clinic-2")
    assert not plain.search("old-vip-clinic")
    assert prefix.search("test-123") and not prefix.search("a-test-1")
    assert regex.search("demo.42") and regex.search("demoX42")


# --- bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("RECONCILER_MODE", "enforced", 'RECONCILER_MODE: must be one of dry_run, enforce, got '
                                        '"enforced"'),
        ("RECONCILER_INTERVAL_SECONDS", "0", "RECONCILER_INTERVAL_SECONDS: must be a number > 0"),
        ("RECONCILER_INTERVAL_SECONDS", "-1", "must be a number > 0"),
        ("RECONCILER_INTERVAL_SECONDS", "inf", "must be a number > 0"),
        ("RECONCILER_INTERVAL_SECONDS", "nan", "must be a number > 0"),
        ("RECONCILER_INTERVAL_SECONDS", "soon", "must be a number > 0"),
        ("RECONCILER_ORPHAN_GRACE_SECONDS", "-0.5", "must be a number >= 0"),
        ("RECONCILER_ORPHAN_CONFIRMATIONS", "0", "must be a whole number >= 1"),
        ("RECONCILER_ORPHAN_CONFIRMATIONS", "1.5", "must be a whole number >= 1"),
        ("RECONCILER_MAX_DELETIONS", "ten",
         'RECONCILER_MAX_DELETIONS: must be a whole number >= 0, got "ten"'),
        ("RECONCILER_MAX_DELETIONS", "-1", "must be a whole number >= 0"),
        ("RECONCILER_MAX_DELETION_FRACTION", "0", "must be a fraction in (0, 1]"),
        ("RECONCILER_MAX_DELETION_FRACTION", "1.01", "must be a fraction in (0, 1]"),
        ("RECONCILER_MASS_DISCONNECT_FRACTION", "half", "must be a fraction in (0, 1]"),
        ("RECONCILER_DISCONNECT_AFTER_SECONDS", "-1", "must be a number >= 0"),
        ("RECONCILER_SHUTDOWN_SECONDS", "0", "RECONCILER_SHUTDOWN_SECONDS: must be a number > 0"),
        ("RECONCILER_SHUTDOWN_SECONDS", "-3", "must be a number > 0"),
        ("RECONCILER_SHUTDOWN_SECONDS", "soon", "must be a number > 0"),
        ("RECONCILER_PROBE_RPS", "0", "must be a number > 0"),
        ("RECONCILER_PROBE_INTERVAL_SECONDS", "-5", "must be a number > 0"),
        ("RECONCILER_HTTP_TIMEOUT_SECONDS", "0", "must be a number > 0"),
        ("RECONCILER_MANAGED_PATTERN", "clinic-(",
         "must be a valid regular expression (missing ), unterminated subpattern"),
        ("RECONCILER_PROTECTED", "ok-name,[bad",
         '"[bad" is not a valid regular expression (unterminated character set'),
        ("RECONCILER_PROTECTED", "^clinic-0{2,4}", '"^clinic-0{2" has unbalanced braces'),
        ("RECONCILER_INTEGRATIONS_TABLE", "integrations", "must be schema.table"),
        ("RECONCILER_INTEGRATIONS_TABLE", "a.b.c", "must be schema.table"),
        ("RECONCILER_INTEGRATIONS_TABLE", 'hc."x; drop"', "must be schema.table"),
        ("RECONCILER_INTEGRATIONS_TABLE", "1hc.integrations", "must be schema.table"),
        ("RECONCILER_INTEGRATIONS_TABLE", f"hc.{'t' * 64}", "must be schema.table"),
        ("RECONCILER_SCHEMA", "my-schema", "must be an SQL identifier"),
        ("RECONCILER_SCHEMA", "s" * 64, "must be an SQL identifier"),
        ("RECONCILER_HTTP_ADDR", "9478", "must be host:port"),
        ("RECONCILER_HTTP_ADDR", ":9478", "must be host:port"),
        ("RECONCILER_HTTP_ADDR", "0.0.0.0:65536", "port 0-65535"),
        ("RECONCILER_HTTP_ADDR", "0.0.0.0:http", "must be host:port"),
        ("RECONCILER_HTTP_ADDR", "::1:9478", "an IPv6 host in brackets"),
        ("RECONCILER_LOG_FORMAT", "text", "must be one of json, console"),
        ("RECONCILER_LOG_LEVEL", "trace", "must be one of debug, info, warning, error"),
        ("RECONCILER_EVOLUTION_URL", "evo.example", "must be an http:// or https:// URL"),
        ("RECONCILER_EVOLUTION_URL", "ftp://evo.example", "must be an http:// or https:// URL"),
        ("RECONCILER_EVOLUTION_URL", "http://", "with a host"),
        ("RECONCILER_EVOLUTION_URL", "http://evo:99999", "with a valid port"),
        ("RECONCILER_EVOLUTION_URL", "https://admin:pw@evo", "must not contain credentials"),
        ("RECONCILER_EVOLUTION_URL", "https://evo.example/?instance=x",
         'must not have a query string or fragment, got "https://evo.example/?instance=x"'),
        ("RECONCILER_EVOLUTION_URL", "https://evo.example?", "must not have a query string"),
        ("RECONCILER_EVOLUTION_URL", "https://evo.example/api#v2", "or fragment"),
        ("RECONCILER_EVOLUTION_URL", "https://evo.example#", "or fragment"),
        ("RECONCILER_DATABASE_URL", "mysql://u:p@h/d", "must be a postgres:// or postgresql://"),
        ("RECONCILER_DATABASE_URL", "host=db user=app", "must be a postgres:// or postgresql://"),
        ("RECONCILER_REDIS_URL", "http://cache:6379", "must be a redis:// or rediss:// URL"),
        ("RECONCILER_REDIS_URL", "redis://", "must be a redis:// or rediss:// URL with a host"),
        ("RECONCILER_REDIS_URL", "unix://", "or a unix:// socket URL"),
        ("RECONCILER_REDIS_URL", "redis://cache:port", "must be a redis:// or rediss:// URL"),
    ],
)
def test_rejects(name: str, value: str, expected: str) -> None:
    message = error({**BASE, name: value})
    assert message.startswith(f"{name}: ")
    assert expected in message
    assert "\n" not in message


def test_every_problem_is_reported_at_once_one_per_line() -> None:
    message = error({**BASE, "RECONCILER_MODE": "enforced", "RECONCILER_MAX_DELETIONS": "ten",
                     "RECONCILER_SCHEMA": "a-b"})
    assert message.splitlines() == [
        'RECONCILER_MODE: must be one of dry_run, enforce, got "enforced"',
        'RECONCILER_MAX_DELETIONS: must be a whole number >= 0, got "ten"',
        "RECONCILER_SCHEMA: must be an SQL identifier matching ^[A-Za-z_][A-Za-z0-9_]{0,62}$, "
        'got "a-b"',
    ]


def test_the_error_lists_its_problems() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "RECONCILER_MODE": "x", "RECONCILER_PROBE_RPS": "0"})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "RECONCILER_MODE", "RECONCILER_PROBE_RPS"]


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("RECONCILER_DATABASE_URL", "RECONCILER_DATABASE_URL: required"),
        ("RECONCILER_REDIS_URL", "RECONCILER_REDIS_URL: required"),
        ("RECONCILER_EVOLUTION_URL", "RECONCILER_EVOLUTION_URL: required unless"),
        ("RECONCILER_EVOLUTION_API_KEY",
         "RECONCILER_EVOLUTION_API_KEY: required with RECONCILER_EVOLUTION_URL"),
    ],
)
def test_required(missing: str, expected: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    assert expected in error(env)


def test_an_api_key_without_a_url_is_an_error() -> None:
    env = {k: v for k, v in BASE.items() if k != "RECONCILER_EVOLUTION_URL"}
    message = error(env)
    assert "RECONCILER_EVOLUTION_API_KEY: set without RECONCILER_EVOLUTION_URL" in message


def test_nothing_at_all_names_every_missing_setting() -> None:
    assert [line.split(":")[0] for line in error({}).splitlines()] == [
        "RECONCILER_DATABASE_URL", "RECONCILER_REDIS_URL", "RECONCILER_EVOLUTION_URL"]


# --- secrets from files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "attribute"),
    [
        ("RECONCILER_DATABASE_URL", DB, "database_url"),
        ("RECONCILER_REDIS_URL", REDIS, "redis_url"),
        ("RECONCILER_EVOLUTION_API_KEY", "key-from-file", "api_key"),
    ],
)
def test_secret_from_file(tmp_path: Path, name: str, content: str, attribute: str) -> None:
    path = write(tmp_path / "secret", content + "\n")
    env = {k: v for k, v in BASE.items() if k != name} | {f"{name}_FILE": path}
    s = load_settings(env)
    holder = s.servers[0] if attribute == "api_key" else s
    assert getattr(holder, attribute) == content


@pytest.mark.parametrize(
    ("content", "expected"),
    [("k", "k"), ("k\n", "k"), ("k\r\n", "k"), ("k\n\n", "k"), (" k \n", "k"),
     ("\tk 2\n", "k 2")],
)
def test_secret_file_loses_surrounding_whitespace(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "key"
    path.write_bytes(content.encode())
    env = {**BASE, "RECONCILER_EVOLUTION_API_KEY": "",
           "RECONCILER_EVOLUTION_API_KEY_FILE": str(path)}
    assert load_settings(env).servers[0].api_key == expected


@pytest.mark.parametrize(
    "name", ["RECONCILER_DATABASE_URL", "RECONCILER_REDIS_URL", "RECONCILER_EVOLUTION_API_KEY"]
)
def test_a_secret_and_its_file_together_are_an_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "secret", "whatever")
    message = error({**BASE, f"{name}_FILE": path})
    assert f"{name}, {name}_FILE: both are set" in message
    assert "required" not in message


def test_an_unreadable_secret_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    message = error({**BASE, "RECONCILER_DATABASE_URL": "",
                     "RECONCILER_DATABASE_URL_FILE": str(missing)})
    assert message == (f"RECONCILER_DATABASE_URL_FILE: cannot read {missing}: "
                       "No such file or directory")


def test_an_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "empty", "\n")
    message = error({**BASE, "RECONCILER_REDIS_URL": "", "RECONCILER_REDIS_URL_FILE": path})
    assert message == f"RECONCILER_REDIS_URL_FILE: {path} is empty"


def test_a_bad_value_from_a_file_names_the_file_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "db", "mysql://u:file-pass@h/d\n")
    message = error({**BASE, "RECONCILER_DATABASE_URL": "", "RECONCILER_DATABASE_URL_FILE": path})
    assert message == "RECONCILER_DATABASE_URL_FILE: must be a postgres:// or postgresql:// URL"


# --- the TOML file ---------------------------------------------------------------------------


def test_toml_values_are_read(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", """
mode = "enforce"
interval_seconds = 12
max_deletion_fraction = 0.5
max_deletions = 0
protected = ["vip", "^test-"]
http_addr = "127.0.0.1:9000"
events_stream = "whatsapp:stream"
""")
    s = load(RECONCILER_CONFIG=config)
    assert s.mode is Mode.ENFORCE
    assert (s.interval_seconds, s.max_deletion_fraction, s.max_deletions) == (12, 0.5, 0)
    assert [p.pattern for p in s.protected] == ["^vip$", "^test-"]
    assert (s.http_host, s.http_port) == ("127.0.0.1", 9000)
    assert s.events_stream == "whatsapp:stream"
    assert s.config_file == config


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", 'mode = "enforce"\nschema = "from_file"\n')
    s = load(RECONCILER_CONFIG=config, RECONCILER_SCHEMA="from_env")
    assert (s.mode, s.schema) == (Mode.ENFORCE, "from_env")


def test_environment_secret_file_wins_over_the_file_value(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", 'redis_url = "redis://file-host"\n')
    secret = write(tmp_path / "redis", "redis://env-file-host\n")
    s = load_settings({**BASE, "RECONCILER_REDIS_URL": "", "RECONCILER_CONFIG": config,
                       "RECONCILER_REDIS_URL_FILE": secret})
    assert s.redis_url == "redis://env-file-host"


def test_a_bad_value_from_the_file_names_variable_key_and_file(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", 'mode = "enforced"\nmax_deletions = -2\n')
    assert error({**BASE, "RECONCILER_CONFIG": config}).splitlines() == [
        f'RECONCILER_MODE (mode in {config}): must be one of dry_run, enforce, got "enforced"',
        f"RECONCILER_MAX_DELETIONS (max_deletions in {config}): must be a whole number >= 0,"
        " got -2",
    ]


@pytest.mark.parametrize(
    "line", ["max_deletions = true", "interval_seconds = false", "max_deletion_fraction = true"]
)
def test_booleans_are_not_numbers(tmp_path: Path, line: str) -> None:
    config = write(tmp_path / "r.toml", line + "\n")
    assert error({**BASE, "RECONCILER_CONFIG": config}).endswith("got true" if "true" in line
                                                                   else "got false")


def test_an_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", 'mode = "enforce"\nmax_deletion = 3\n')
    assert error({**BASE, "RECONCILER_CONFIG": config}) == (
        f"max_deletion (in {config}): unknown setting")


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "absent.toml"
    assert error({**BASE, "RECONCILER_CONFIG": str(config)}) == (
        f"RECONCILER_CONFIG: cannot read {config}: No such file or directory")


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", "mode = \n")
    assert error({**BASE, "RECONCILER_CONFIG": config}).startswith(
        f"RECONCILER_CONFIG: {config} is not valid TOML (")


def test_toml_secret_files_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    write(tmp_path / "secrets" / "db", DB + "\n")
    config = write(tmp_path / "r.toml", 'database_url_file = "secrets/db"\n')
    env = {k: v for k, v in BASE.items() if k != "RECONCILER_DATABASE_URL"}
    assert load_settings({**env, "RECONCILER_CONFIG": config}).database_url == DB


def test_the_single_server_may_come_from_the_file(tmp_path: Path) -> None:
    write(tmp_path / "key", "file-key\n")
    config = write(tmp_path / "r.toml",
                   'evolution_url = "http://evo:8080"\nevolution_api_key_file = "key"\n')
    env = {k: v for k, v in BASE.items()
           if k not in ("RECONCILER_EVOLUTION_URL", "RECONCILER_EVOLUTION_API_KEY")}
    s = load_settings({**env, "RECONCILER_CONFIG": config})
    assert s.servers == (ServerConfig("default", "http://evo:8080", "file-key"),)


def test_toml_secret_and_its_file_together_are_an_error(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", 'redis_url = "redis://h"\nredis_url_file = "x"\n')
    env = {k: v for k, v in BASE.items() if k != "RECONCILER_REDIS_URL"}
    assert error({**env, "RECONCILER_CONFIG": config}) == (
        f"RECONCILER_REDIS_URL (redis_url in {config}), RECONCILER_REDIS_URL_FILE (redis_url_file"
        f" in {config}): both are set; set only one")


# --- servers from the TOML file --------------------------------------------------------------


SERVERS = """
[[servers]]
name = "br-1"
url = "https://evolution-br-1.example.com/"
api_key_file = "br-1.key"
version = "v2"

[[servers]]
name = "legacy.v1"
url = "http://10.0.0.5:8080"
api_key = "legacy-key"
version = "v1"

[[servers]]
name = "br-2"
url = "https://evolution-br-2.example.com"
api_key = "br-2-key"
"""


def without_server(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in BASE.items()
           if k not in ("RECONCILER_EVOLUTION_URL", "RECONCILER_EVOLUTION_API_KEY")}
    return env | extra


def test_servers_from_the_file(tmp_path: Path) -> None:
    write(tmp_path / "br-1.key", "br-1-key\n")
    config = write(tmp_path / "r.toml", SERVERS)
    s = load_settings(without_server(RECONCILER_CONFIG=config))
    assert s.servers == (
        ServerConfig("br-1", "https://evolution-br-1.example.com", "br-1-key", "v2"),
        ServerConfig("legacy.v1", "http://10.0.0.5:8080", "legacy-key", "v1"),
        ServerConfig("br-2", "https://evolution-br-2.example.com", "br-2-key", "auto"),
    )


def test_evolution_url_with_listed_servers_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "br-1.key", "br-1-key\n")
    config = write(tmp_path / "r.toml", SERVERS)
    message = error(without_server(RECONCILER_CONFIG=config,
                                   RECONCILER_EVOLUTION_URL="https://evo.example"))
    assert message == f"RECONCILER_EVOLUTION_URL: set while {config} lists [[servers]]"


def test_evolution_api_key_with_listed_servers_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "br-1.key", "br-1-key\n")
    config = write(tmp_path / "r.toml", SERVERS)
    message = error(without_server(RECONCILER_CONFIG=config, RECONCILER_EVOLUTION_API_KEY=KEY))
    assert message.startswith(f"RECONCILER_EVOLUTION_API_KEY: set while {config} lists")
    assert KEY not in message


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ('name = "b r"\nurl = "http://e"\napi_key = "k"',
         'name of [[servers]] #1 in {config}: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}$, '
         'got "b r"'),
        ('name = "-x"\nurl = "http://e"\napi_key = "k"', "name of [[servers]] #1"),
        ('url = "http://e"\napi_key = "k"', "name of [[servers]] #1 in {config}: required"),
        ('name = "a"\napi_key = "k"', "url of [[servers]] #1 in {config}: required"),
        ('name = "a"\nurl = "http://e/?x=1"\napi_key = "k"',
         'url of [[servers]] #1 in {config}: must not have a query string or fragment, '
         'got "http://e/?x=1"'),
        ('name = "a"\nurl = "http://e#top"\napi_key = "k"',
         "url of [[servers]] #1 in {config}: must not have a query string or fragment"),
        ('name = "a"\nurl = "e"\napi_key = "k"',
         'url of [[servers]] #1 in {config}: must be an http:// or https:// URL with a host, '
         'got "e"'),
        ('name = "a"\nurl = "http://e"',
         "api_key of [[servers]] #1 in {config}: required (api_key or api_key_file)"),
        ('name = "a"\nurl = "http://e"\napi_key = "k"\napi_key_file = "f"',
         "api_key of [[servers]] #1 in {config}, api_key_file of [[servers]] #1 in {config}: "
         "both are set"),
        ('name = "a"\nurl = "http://e"\napi_key_file = "absent"',
         "api_key_file of [[servers]] #1 in {config}: cannot read"),
        ('name = "a"\nurl = "http://e"\napi_key = "k"\nversion = "v3"',
         'version of [[servers]] #1 in {config}: must be one of auto, v1, v2, got "v3"'),
        ('name = "a"\nurl = "http://e"\napi_key = "k"\nkey = "k"',
         "key of [[servers]] #1 in {config}: unknown key"),
    ],
)
def test_bad_servers(tmp_path: Path, server: str, expected: str) -> None:
    config = write(tmp_path / "r.toml", f"[[servers]]\n{server}\n")
    message = error(without_server(RECONCILER_CONFIG=config))
    assert expected.format(config=config) in message


def test_server_names_are_unique(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", """
[[servers]]
name = "a"
url = "http://one"
api_key = "k1"
[[servers]]
name = "a"
url = "http://two"
api_key = "k2"
""")
    assert error(without_server(RECONCILER_CONFIG=config)) == (
        f'name of [[servers]] #2 in {config}: server name "a" is used twice')


def test_two_servers_with_one_url_are_an_error(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", """
[[servers]]
name = "a"
url = "http://one/"
api_key = "k1"
[[servers]]
name = "b"
url = "http://one"
api_key = "k2"
""")
    assert error(without_server(RECONCILER_CONFIG=config)) == (
        f'url of [[servers]] #2 in {config}: same URL as server "a"')


def test_servers_must_be_tables(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", 'servers = ["http://e"]\n')
    assert error(without_server(RECONCILER_CONFIG=config)) == (
        f"servers (in {config}): must be a list of [[servers]] tables")


def test_an_empty_server_list_still_requires_a_server(tmp_path: Path) -> None:
    config = write(tmp_path / "r.toml", "servers = []\n")
    assert error(without_server(RECONCILER_CONFIG=config)).startswith(
        "RECONCILER_EVOLUTION_URL: required unless")


# --- which names are read --------------------------------------------------------------------


def test_the_schema_variable_is_reconciler_schema_only() -> None:
    """`own_schema` is `schema` in TOML and RECONCILER_SCHEMA in the environment, nothing else."""
    assert load(RECONCILER_SCHEMA="from_env").schema == "from_env"
    s = load(SCHEMA="bare", schema="lower", RECONCILER_OWN_SCHEMA="field_name")
    assert s.schema == "reconciler"
    assert s.warnings == ("RECONCILER_OWN_SCHEMA: unknown setting, ignored",)


def test_only_the_known_variables_are_read() -> None:
    s = load(RECONCILER_SERVERS='[{"name": "x", "url": "http://x", "api_key": "k"}]',
             RECONCILER_CONFIG_FILE="/etc/r.toml", RECONCILER_WARNINGS='["x"]',
             reconciler_mode="enforce")
    assert s.servers == (ServerConfig("default", "https://evo.example", KEY),)
    assert (s.config_file, s.mode) == (None, Mode.DRY_RUN)
    assert s.warnings == tuple(f"RECONCILER_{name}: unknown setting, ignored"
                               for name in ("CONFIG_FILE", "SERVERS", "WARNINGS"))


@pytest.mark.parametrize("key", ["config_file", "warnings"])
def test_fields_that_are_not_settings_are_unknown_in_toml(tmp_path: Path, key: str) -> None:
    config = write(tmp_path / "r.toml", f'{key} = "x"\n')
    assert error({**BASE, "RECONCILER_CONFIG": config}) == f"{key} (in {config}): unknown setting"


@pytest.mark.parametrize(
    ("name", "value"),
    [("RECONCILER_SCHEMA", "rec\n"), ("RECONCILER_INTEGRATIONS_TABLE", "hc.integrations\n"),
     ("RECONCILER_INTEGRATIONS_TABLE", "hc\n.integrations")],
)
def test_an_sql_identifier_may_not_end_in_a_newline(name: str, value: str) -> None:
    assert error({**BASE, name: value}).startswith(f"{name}: must be ")
