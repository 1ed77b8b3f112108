"""Secrets never show: not in error messages, not in a repr; `redact` and `safe_url` mask them."""

from __future__ import annotations

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
