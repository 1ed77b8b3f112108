"""The Dockerfile, checked by parsing it (no Docker engine runs here), and its HEALTHCHECK command
run for real against the daemon's HTTP endpoints."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from reconciler.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = re.compile(
    r"(?<![\w-])(gcc|g\+\+|cc|clang|make|build-essential|[\w.+-]+-dev)(?![\w-])")
OCI_LABELS = ("title", "description", "version", "revision", "licenses")


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(REPO / "Dockerfile"))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    result: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    return stages(parser)[-1]


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [str(i["value"]) for i in stage if i["instruction"] == name]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{value} is not in exec (JSON) form"
    return [str(v) for v in parsed]


def healthcheck_command(parser: DockerfileParser) -> list[str]:
    [healthcheck] = instructions(final_stage(parser), "HEALTHCHECK")
    return exec_form(healthcheck[healthcheck.index("CMD") + len("CMD"):].strip())


def test_multi_stage_on_a_slim_python(dockerfile: DockerfileParser) -> None:
    assert dockerfile.is_multistage
    assert len(stages(dockerfile)) >= 2
    for image in dockerfile.parent_images:
        name, _, tag = image.partition(":")
        assert name in ("python", "docker.io/library/python"), image
        assert "slim" in tag, image
    python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in python.removeprefix(">=").split("."))
    for image in dockerfile.parent_images:
        version = tuple(int(p) for p in image.partition(":")[2].split("-")[0].split("."))
        assert version >= minimum, f"{image} is older than requires-python {python}"


def test_final_stage_has_no_build_tools_and_copies_the_built_environment(
        dockerfile: DockerfileParser) -> None:
    final = final_stage(dockerfile)
    for command in instructions(final, "RUN"):
        assert not BUILD_TOOLS.search(command), f"build tools in the final stage: {command}"
    copies = instructions(final, "COPY")
    assert any(c.startswith("--from=") for c in copies), "the final stage builds nothing itself"
    assert all(c.startswith("--from=") for c in copies), (
        "the final stage copies sources from the build context")


def test_runs_as_a_numeric_non_root_user(dockerfile: DockerfileParser) -> None:
    users = instructions(final_stage(dockerfile), "USER")
    assert users, "no USER in the final stage"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, "Kubernetes' runAsNonRoot needs a numeric uid"
    assert not group or (group.isdigit() and int(group) != 0)


def test_entrypoint_runs_the_daemon(dockerfile: DockerfileParser) -> None:
    final = final_stage(dockerfile)
    [entrypoint] = instructions(final, "ENTRYPOINT")
    [cmd] = instructions(final, "CMD")
    assert exec_form(entrypoint) == ["reconciler"]
    assert exec_form(cmd) == ["run"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "reconciler" in scripts
    assert build_parser().parse_args(exec_form(cmd)).command == "run"


def test_exposes_the_metrics_port_and_labels(dockerfile: DockerfileParser) -> None:
    final = final_stage(dockerfile)
    assert instructions(final, "EXPOSE") == ["9478"]
    assert dockerfile.envs["RECONCILER_HTTP_ADDR"].endswith(":9478")
    labels = dockerfile.labels
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"missing label {key}"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version


def test_healthcheck_hits_healthz(dockerfile: DockerfileParser) -> None:
    command = healthcheck_command(dockerfile)
    assert command[0] == "python"
    assert "/healthz" in " ".join(command)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/"))
               for p in prefixes):
            excluded = not negate
    return excluded


def test_build_context_keeps_what_the_build_copies(dockerfile: DockerfileParser) -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [source
               for stage in stages(dockerfile)
               for copy in instructions(stage, "COPY") if not copy.startswith("--from=")
               for source in copy.split()[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for kept in ("reconciler/cli.py", "reconciler/observability.py"):
        assert not dockerignored(kept, patterns)
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/conftest.py",
                    "reconciler/__pycache__/cli.cpython-312.pyc"):
        assert dockerignored(dropped, patterns), dropped


async def run_healthcheck(command: list[str], port: int) -> int:
    env = {**os.environ, "RECONCILER_HTTP_ADDR": f"0.0.0.0:{port}"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with asyncio.timeout(20):
        return await process.wait()


async def test_healthcheck_command_follows_the_daemons_health(
        dockerfile: DockerfileParser, live_daemon: Any) -> None:
    command = healthcheck_command(dockerfile)
    assert await run_healthcheck(command, live_daemon.port) == 0
    saved = live_daemon.health.last_tick
    live_daemon.health.last_tick = time.monotonic() - 3600
    try:
        assert await run_healthcheck(command, live_daemon.port) != 0
    finally:
        live_daemon.health.last_tick = saved
