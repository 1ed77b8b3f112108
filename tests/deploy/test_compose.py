"""deploy/docker-compose.yml hangs together: the reconciler's settings load, and every URL, port,
key and mounted file matches the service or file it names."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from reconciler.cli import build_parser
from reconciler.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's `${VAR:-default}`, with nothing set in the environment."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))
    return document


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def container_ports(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", [])}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_stack_has_its_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "evolution", "reconciler"} <= set(compose["services"])
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_reconciler_settings_load_and_are_in_the_spec(compose: dict[str, Any],
                                                      spec_names: set[str]) -> None:
    for name in ("reconciler", "install-trigger"):
        env = service(compose, name)["environment"]
        assert set(env) <= spec_names, set(env) - spec_names
        settings = load_settings(env)
        assert settings.warnings == ()
        assert settings.mode.value == "dry_run"


def test_urls_point_at_the_services(compose: dict[str, Any]) -> None:
    settings = load_settings(service(compose, "reconciler")["environment"])
    postgres = service(compose, "postgres")
    db = urlsplit(settings.database_url)
    assert db.hostname == "postgres"
    assert db.port in container_ports(postgres)
    assert (db.username, db.password, db.path.lstrip("/")) == (
        postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_PASSWORD"],
        postgres["environment"]["POSTGRES_DB"])
    redis = urlsplit(settings.redis_url)
    assert redis.hostname == "redis"
    assert redis.port in container_ports(service(compose, "redis"))

    [server] = settings.servers
    evolution = service(compose, "evolution")
    url = urlsplit(server.url)
    assert url.hostname == "evolution"
    assert url.port == int(flag(evolution["command"], "--port"))
    assert url.port in container_ports(evolution)
    assert f":{url.port}/" in " ".join(evolution["healthcheck"]["test"])
    assert server.api_key == flag(evolution["command"], "--api-key")
    assert evolution["entrypoint"] == ["python", "-m", "reconciler.simulator"]


def test_metrics_port_matches_the_image(compose: dict[str, Any]) -> None:
    settings = load_settings(service(compose, "reconciler")["environment"])
    exposed = DockerfileParser(path=str(REPO / "Dockerfile")).structure
    [expose] = [i["value"] for i in exposed if i["instruction"] == "EXPOSE"]
    assert container_ports(service(compose, "reconciler")) == {settings.http_port, int(expose)}
    [prometheus] = yaml.safe_load(compose["configs"]["prometheus-config"]["content"])[
        "scrape_configs"]
    assert prometheus["static_configs"][0]["targets"] == [f"reconciler:{settings.http_port}"]


def test_commands_are_reconciler_commands(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name in ("reconciler", "install-trigger"):
        svc = service(compose, name)
        assert "entrypoint" not in svc, "the image's entrypoint is `reconciler`"
        parser.parse_args(svc["command"])
    assert service(compose, "reconciler")["command"] == ["run"]


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    mounts = [volume.split(":")[:2] for svc in compose["services"].values()
              for volume in svc.get("volumes", [])]
    assert mounts
    for source, _ in mounts:
        assert (COMPOSE_FILE.parent / source).resolve().is_file(), source
    targets = {Path(source).name: target for source, target in mounts}
    rules = yaml.safe_load(compose["configs"]["prometheus-config"]["content"])["rule_files"]
    assert rules == [targets["alerts.yml"]]
    providers = yaml.safe_load(compose["configs"]["grafana-dashboards"]["content"])["providers"]
    assert Path(targets["dashboard.json"]).parent == Path(providers[0]["options"]["path"])


def test_simulator_accepts_the_compose_flags(compose: dict[str, Any]) -> None:
    if importlib.util.find_spec("reconciler.simulator") is None:
        pytest.skip("reconciler.simulator is not written yet")
    help_text = subprocess.run(
        [sys.executable, "-m", "reconciler.simulator", "--help"],
        check=True, capture_output=True, text=True, timeout=60).stdout
    for argument in service(compose, "evolution")["command"]:
        if argument.startswith("--"):
            assert argument in help_text, f"the simulator has no {argument}"
