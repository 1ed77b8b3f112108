"""Through the real command line: trimmed keys work, bad settings exit 2 unseen, output is safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.simulator import Simulator
from tests.conftest import DbNames
from tests.integration.conftest import API_KEY, Env

CLOSED = "127.0.0.1:9"
"""Nothing listens there: a command that made a request would fail (exit 1), not exit 2."""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(api_key=API_KEY, version="2.3.6")
    simulator.start_in_thread()
    yield simulator
    simulator.stop_thread()


@pytest.fixture
def env(database_url: str, redis_url: str, db_names: DbNames, channel: str,
        sim: Simulator) -> Env:
    return Env(database_url, redis_url, db_names, channel, sim)


def cli(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    environ.update({
        "RECONCILER_DATABASE_URL": f"postgresql://app:db-S3cret@{CLOSED}/app",
        "RECONCILER_REDIS_URL": f"redis://:redis-S3cret@{CLOSED}/0",
        "RECONCILER_EVOLUTION_URL": f"http://{CLOSED}",
        "RECONCILER_LOG_FORMAT": "json",
        **settings,
    })
    return subprocess.run([sys.executable, "-m", "reconciler", *args], env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


COMMANDS = [("once", "--output", "json"), ("plan", "--output", "json"), ("check",)]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("key", ["clé-S3cret-key", "evo-S3cret\nkey", "evo-S3cret\x07key"])
def test_an_unsendable_key_exits_2_naming_the_setting_never_the_key(
    command: tuple[str, ...], key: str
) -> None:
    proc = cli(*command, RECONCILER_EVOLUTION_API_KEY=key)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("reconciler: RECONCILER_EVOLUTION_API_KEY: must hold only")
    assert "Traceback" not in proc.stderr
    for shown in (proc.stdout, proc.stderr):
        assert "S3cret" not in shown


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unsendable_server_key_in_toml_exits_2_naming_the_key(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    config = tmp_path / "r.toml"
    config.write_text('[[servers]]\nname = "br-1"\nurl = "http://127.0.0.1:9"\n'
                      'api_key = "evo-S3cret-\\u00e9"\n')
    proc = cli(*command, RECONCILER_EVOLUTION_URL="", RECONCILER_CONFIG=str(config))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"reconciler: api_key of [[servers]] #1 in {config}: ")
    assert "S3cret" not in proc.stdout + proc.stderr


def test_a_url_with_a_query_string_exits_2() -> None:
    proc = cli("check", RECONCILER_EVOLUTION_URL="http://127.0.0.1:9/?apikey=x",
               RECONCILER_EVOLUTION_API_KEY="k")
    assert proc.returncode == 2
    assert proc.stderr.startswith("reconciler: RECONCILER_EVOLUTION_URL: must not have a query")


@pytest.mark.parametrize("padding", ["\n", "\r\n", " \n"])
def test_a_key_with_surrounding_whitespace_reaches_the_server_trimmed(
    env: Env, padding: str
) -> None:
    proc = env.cli("check", RECONCILER_EVOLUTION_API_KEY=API_KEY + padding)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "server default: ok" in proc.stdout

    code, report = env.cli_json("once", RECONCILER_EVOLUTION_API_KEY=f"{padding}{API_KEY}{padding}")
    assert code == 0, report
    assert report["servers"]["default"]["ok"] is True
    assert report["errors"] == []
    assert API_KEY not in proc.stdout + proc.stderr


def test_a_server_key_file_with_surrounding_whitespace_reaches_the_server_trimmed(
    env: Env, tmp_path: Path
) -> None:
    (tmp_path / "br-1.key").write_text(f"  {API_KEY}\n\n")
    config = tmp_path / "r.toml"
    config.write_text(f'[[servers]]\nname = "br-1"\nurl = "{env.sim.url}"\n'
                      'api_key_file = "br-1.key"\n')
    proc = env.cli("once", "--output", "json", RECONCILER_EVOLUTION_URL="",
                   RECONCILER_EVOLUTION_API_KEY="", RECONCILER_CONFIG=str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["servers"]["br-1"]["ok"] is True


def test_check_escapes_what_a_server_says(env: Env) -> None:
    env.sim.fault("fetchInstances", status=500,
                  body={"status": 500, "error": "x", "message": "boom\nserver default: ok\x1b[2J"})
    proc = env.cli("check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("server default")]
    assert len(failed) == 1, proc.stdout
    assert failed[0].startswith("server default: FAILED fetchInstances: HTTP 500: boom")
    assert failed[0].endswith(r"ok\x1b[2J")
    assert "\x1b" not in proc.stdout
