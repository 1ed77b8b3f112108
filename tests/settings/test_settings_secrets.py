"""Secrets never show: not in error messages, not in a repr; `redact` and `safe_url` mask them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.settings import (
    ServerConfig,
    Settings,
    SettingsError,
    load_settings,
    redact,
    safe_url,
)

DB_PASS = "db-S3cret+pass"
REDIS_PASS = "redis-S3cret"
KEY = "evo-S3cret-key"
SECRETS = (DB_PASS, REDIS_PASS, KEY)
ENV = {
    "RECONCILER_DATABASE_URL": f"postgresql://app:{DB_PASS}@db:5432/app",
    "RECONCILER_REDIS_URL": f"redis://default:{REDIS_PASS}@cache:6379/0",
    "RECONCILER_EVOLUTION_URL": "https://evo.example",
    "RECONCILER_EVOLUTION_API_KEY": KEY,
}


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {**ENV, "RECONCILER_DATABASE_URL": f"mysql://app:{DB_PASS}@db/app"},
        {**ENV, "RECONCILER_DATABASE_URL": DB_PASS},
        {**ENV, "RECONCILER_REDIS_URL": f"http://default:{REDIS_PASS}@cache"},
        {**ENV, "RECONCILER_REDIS_URL": REDIS_PASS},
        {**ENV, "RECONCILER_EVOLUTION_URL": f"https://admin:{KEY}@evo"},
        {**ENV, "RECONCILER_EVOLUTION_URL": ""},
        {**ENV, "RECONCILER_EVOLUTION_API_KEY_FILE": "/nonexistent"},
        {**ENV, "RECONCILER_MODE": f"postgresql://app:{DB_PASS}@db"},
    ],
)
def test_error_messages_never_hold_a_secret(env: dict[str, str]) -> None:
    assert_no_secret(error(env))


def test_a_secret_from_a_file_never_shows(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.write_text(f"mysql://app:{DB_PASS}@db/app\n")
    env = {**ENV, "RECONCILER_DATABASE_URL": "", "RECONCILER_DATABASE_URL_FILE": str(path)}
    assert_no_secret(error(env))


def test_secrets_in_toml_never_show(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text(f"""
database_url = "mysql://app:{DB_PASS}@db/app"
redis_url = {{ password = "{REDIS_PASS}" }}
[[servers]]
name = "bad name"
url = "http://e"
api_key = "{KEY}"
[[servers]]
name = "b"
url = "http://f"
api_key = 12345
""")
    env = {"RECONCILER_CONFIG": str(config)}
    message = error(env)
    assert len(message.splitlines()) == 4
    assert_no_secret(message)
    assert "12345" not in message


def test_repr_hides_secrets() -> None:
    settings = load_settings(ENV)
    for text in (repr(settings), str(settings), repr(settings.servers), str(settings.servers[0])):
        assert_no_secret(text)
    assert "postgresql://app:***@db:5432/app" in repr(settings)
    assert "redis://default:***@cache:6379/0" in repr(settings)


def test_repr_of_a_server_hides_its_key() -> None:
    assert repr(ServerConfig("a", "http://e", KEY)) == (
        "ServerConfig(name='a', url='http://e', version='auto')")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:pw@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:@/postgres?host=/tmp/pg"),
        ("postgresql://app:p@ss:w0rd@db/app", "postgresql://app:***@db/app"),
        ("postgresql://db/app?user=app&password=pw&sslmode=require",
         "postgresql://db/app?user=app&password=***&sslmode=require"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:pw@cache", "rediss://user:***@cache"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("https://evo.example/api", "https://evo.example/api"),
    ],
)
def test_safe_url(url: str, expected: str) -> None:
    assert safe_url(url) == expected
    assert safe_url(safe_url(url)) == expected


def test_redact_without_settings_masks_passwords_in_urls() -> None:
    text = "connect to postgresql://app:pw1@db/app failed; redis://:pw2@cache:6379 down"
    assert redact(text) == (
        "connect to postgresql://app:***@db/app failed; redis://:***@cache:6379 down")


def test_redact_with_settings_masks_every_secret_anywhere() -> None:
    settings = load_settings(ENV)
    text = (f"apikey={KEY} password {DB_PASS!r} auth {REDIS_PASS} "
            f"encoded {DB_PASS.replace('+', '%2B')} "
            f"url {ENV['RECONCILER_DATABASE_URL']}")
    redacted = redact(text, settings)
    assert_no_secret(redacted)
    assert "%2B" not in redacted
    assert redacted.startswith("apikey=*** password '***' auth *** encoded *** url postgresql://")


def test_redact_masks_every_server_key(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text("""
[[servers]]
name = "a"
url = "http://a"
api_key = "key-of-a"
[[servers]]
name = "b"
url = "http://b"
api_key = "key-of-b"
""")
    settings = load_settings({**ENV, "RECONCILER_EVOLUTION_URL": "",
                              "RECONCILER_EVOLUTION_API_KEY": "",
                              "RECONCILER_CONFIG": str(config)})
    assert redact("a=key-of-a b=key-of-b", settings) == "a=*** b=***"


def test_redact_leaves_ordinary_text_alone() -> None:
    settings = Settings(database_url="postgresql://app@db/app", redis_url="redis://cache",
                        servers=(ServerConfig("a", "http://a", "k3y"),))
    assert redact("nothing secret here: 42 instances", settings) == (
        "nothing secret here: 42 instances")


# --- surrounding whitespace, and keys an HTTP header cannot carry ------------------------------


@pytest.mark.parametrize("padding", ["\n", "\r\n", " ", "\t \n\n"])
def test_every_secret_from_the_environment_loses_surrounding_whitespace(padding: str) -> None:
    env = {name: value if name == "RECONCILER_EVOLUTION_URL" else f"{padding}{value}{padding}"
           for name, value in ENV.items()}
    settings = load_settings({**env, "RECONCILER_WEBHOOK_TOKEN": f"hook-token{padding}"})
    assert settings.database_url == ENV["RECONCILER_DATABASE_URL"]
    assert settings.redis_url == ENV["RECONCILER_REDIS_URL"]
    assert settings.servers[0].api_key == KEY
    assert settings.webhook_token == "hook-token"


@pytest.mark.parametrize(
    "name",
    ["RECONCILER_DATABASE_URL", "RECONCILER_REDIS_URL", "RECONCILER_EVOLUTION_API_KEY",
     "RECONCILER_WEBHOOK_TOKEN"],
)
def test_every_secret_from_a_file_loses_surrounding_whitespace(tmp_path: Path, name: str) -> None:
    value = ENV.get(name, "hook-token")
    path = tmp_path / "secret"
    path.write_text(f" \n{value}\n\n")
    settings = load_settings({**ENV, name: "", f"{name}_FILE": str(path)})
    assert value in (settings.database_url, settings.redis_url, settings.servers[0].api_key,
                     settings.webhook_token)


def test_server_keys_in_toml_lose_surrounding_whitespace(tmp_path: Path) -> None:
    (tmp_path / "b.key").write_text("key-of-b\r\n")
    config = tmp_path / "r.toml"
    config.write_text("""
[[servers]]
name = "a"
url = "http://a"
api_key = "key-of-a\\n"
[[servers]]
name = "b"
url = "http://b"
api_key_file = "b.key"
""")
    settings = load_settings({**ENV, "RECONCILER_EVOLUTION_URL": "",
                              "RECONCILER_EVOLUTION_API_KEY": "",
                              "RECONCILER_CONFIG": str(config)})
    assert [s.api_key for s in settings.servers] == ["key-of-a", "key-of-b"]


def test_a_secret_of_only_whitespace_is_an_error(tmp_path: Path) -> None:
    message = error({**ENV, "RECONCILER_EVOLUTION_API_KEY": " \n"})
    assert message == "RECONCILER_EVOLUTION_API_KEY: must not be empty"
    path = tmp_path / "token"
    path.write_text(" \n\n")
    assert error({**ENV, "RECONCILER_WEBHOOK_TOKEN_FILE": str(path)}) == (
        f"RECONCILER_WEBHOOK_TOKEN_FILE: {path} is empty")


UNSENDABLE = ["clé-S3cret", "evo\nS3cret", "evo\rS3cret", "evo\x00S3cret", "evo\x1bS3cret",
              "evo\x7fS3cret", "evo\u2028S3cret"]
HEADER_PROBLEM = "must hold only printable ASCII characters (it is sent as an HTTP header)"


@pytest.mark.parametrize("key", UNSENDABLE)
def test_an_api_key_a_header_cannot_carry_is_named_and_never_shown(key: str) -> None:
    message = error({**ENV, "RECONCILER_EVOLUTION_API_KEY": key})
    assert message == f"RECONCILER_EVOLUTION_API_KEY: {HEADER_PROBLEM}"


@pytest.mark.parametrize("key", UNSENDABLE)
def test_an_unsendable_api_key_from_a_file_names_the_file_variable(
    tmp_path: Path, key: str
) -> None:
    path = tmp_path / "key"
    path.write_text(key + "\n")
    message = error({**ENV, "RECONCILER_EVOLUTION_API_KEY": "",
                     "RECONCILER_EVOLUTION_API_KEY_FILE": str(path)})
    assert message == f"RECONCILER_EVOLUTION_API_KEY_FILE: {HEADER_PROBLEM}"


@pytest.mark.parametrize("key", UNSENDABLE)
def test_an_unsendable_server_key_in_toml_names_the_server_and_key(
    tmp_path: Path, key: str
) -> None:
    config = tmp_path / "r.toml"
    config.write_text(f'[[servers]]\nname = "a"\nurl = "http://a"\napi_key = {json.dumps(key)}\n')
    message = error({**ENV, "RECONCILER_EVOLUTION_URL": "", "RECONCILER_EVOLUTION_API_KEY": "",
                     "RECONCILER_CONFIG": str(config)})
    assert message == f"api_key of [[servers]] #1 in {config}: {HEADER_PROBLEM}"


def test_an_unsendable_single_key_in_toml_names_variable_and_key(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text('evolution_api_key = "evo\\tS3cret\\u00e9"\n')
    message = error({**ENV, "RECONCILER_EVOLUTION_API_KEY": "", "RECONCILER_CONFIG": str(config)})
    assert message == (f"RECONCILER_EVOLUTION_API_KEY (evolution_api_key in {config}): "
                       f"{HEADER_PROBLEM}")


def test_inner_spaces_are_sendable() -> None:
    settings = load_settings({**ENV, "RECONCILER_EVOLUTION_API_KEY": "evo key with spaces"})
    assert settings.servers[0].api_key == "evo key with spaces"


# --- the webhook token (SPEC 4.6, 8) -------------------------------------------------------


def test_the_webhook_token_is_unset_by_default() -> None:
    assert load_settings(ENV).webhook_token is None


def test_the_webhook_token_may_come_from_toml_and_never_shows(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text('webhook_token = "hook-S3cret"\n')
    settings = load_settings({**ENV, "RECONCILER_CONFIG": str(config)})
    assert settings.webhook_token == "hook-S3cret"
    assert "hook-S3cret" not in repr(settings)
    assert redact("token hook-S3cret", settings) == "token ***"


@pytest.mark.parametrize("token", ["hook/S3cret", "hook?S3cret", "hook#S3cret", "hook S3cret",
                                   "hook%S3cret", "höok-S3cret"])
def test_a_webhook_token_a_url_path_cannot_carry_is_named_and_never_shown(token: str) -> None:
    message = error({**ENV, "RECONCILER_WEBHOOK_TOKEN": token})
    assert message.startswith("RECONCILER_WEBHOOK_TOKEN: must hold only ")
    assert "S3cret" not in message
