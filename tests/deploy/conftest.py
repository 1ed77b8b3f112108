"""What the checks of the deployment files share: paths, kustomize rendering, a live `/metrics`.

No Docker engine or cluster runs here, so the files are checked by parsing them, by rendering the
kustomizations (`kubectl kustomize` where it is installed, else a small renderer of the features
these kustomizations use) and by comparing them with what the daemon really serves.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from reconciler.observability import Health, Metrics, http_app

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("standalone", "sidecar", "production")
SPEC = REPO.parent / "shared" / "SPEC.md"

Resource = dict[str, Any]
Render = Callable[[Path], list[Resource]]


# --- kustomize -----------------------------------------------------------------------------------


def kubectl_kustomize(directory: Path) -> list[Resource]:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images",
                       "patches"}


def python_kustomize(directory: Path) -> list[Resource]:
    """The subset of kustomize these files use; anything else fails loudly instead of drifting."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - _KUSTOMIZATION_KEYS
    assert not unknown, f"{directory}: the fallback renderer does not support {sorted(unknown)}"
    resources: list[Resource] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += python_kustomize(path)
        else:
            resources += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in k.get("patches", []):
        target = patch["target"]
        assert set(target) <= {"kind", "name"}, target
        matched = [r for r in resources
                   if r["kind"] == target.get("kind", r["kind"])
                   and r["metadata"]["name"] == target.get("name", r["metadata"]["name"])]
        assert matched, f"{directory}: patch target {target} matches nothing"
        for resource in matched:
            for op in yaml.safe_load(patch["patch"]):
                _json_patch(resource, op)
    for image in k.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = (f"{image.get('newName', name)}:"
                                          f"{image.get('newTag', tag)}")
    if "namespace" in k:
        for resource in resources:
            resource["metadata"]["namespace"] = k["namespace"]
    for label in k.get("labels", []):
        assert set(label) == {"pairs"}, f"only plain label pairs are supported: {label}"
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label["pairs"])
    return resources


def _json_patch(document: Resource, op: dict[str, Any]) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~")
                      for p in op["path"].lstrip("/").split("/")]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] in ("add", "replace"):
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, op["value"])
            else:
                node[index] = op["value"]
        else:
            assert op["op"] == "add" or last in node, op
            node[last] = op["value"]
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise AssertionError(f"unsupported JSON patch operation {op['op']}")


def _containers(resource: Resource) -> list[dict[str, Any]]:
    spec = pod_spec(resource)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    if resource.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: dict[str, Any] = resource["spec"]["template"]["spec"]
        return spec
    return None


@pytest.fixture(scope="session")
def python_render() -> Render:
    return python_kustomize


@pytest.fixture(scope="session")
def render() -> Render:
    return kubectl_kustomize if shutil.which("kubectl") else python_kustomize


@pytest.fixture(scope="session")
def rendered(render: Render) -> dict[str, list[Resource]]:
    return {overlay: render(KUBERNETES / "overlays" / overlay) for overlay in OVERLAYS}


# --- the daemon's HTTP endpoints, live -----------------------------------------------------------


@dataclass(frozen=True)
class LiveDaemon:
    url: str
    port: int
    metrics: Metrics
    health: Health


@pytest.fixture(scope="session")
async def live_daemon() -> AsyncIterator[LiveDaemon]:
    """The daemon's real Starlette app under uvicorn on a loopback port the OS picks."""
    metrics, health = Metrics(["default"]), Health(30)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(http_app(metrics, health), log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve([sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "uvicorn stopped before it started"
                await asyncio.sleep(0.01)
        yield LiveDaemon(f"http://127.0.0.1:{port}", port, metrics, health)
    finally:
        server.should_exit = True
        await task
        sock.close()


# --- the contract --------------------------------------------------------------------------------

SECRET_SETTINGS = (
    "RECONCILER_DATABASE_URL", "RECONCILER_REDIS_URL", "RECONCILER_EVOLUTION_API_KEY",
)


@pytest.fixture(scope="session")
def spec_names() -> set[str]:
    """Every RECONCILER_* name SPEC section 8 documents, and the _FILE variants of the secrets."""
    if not SPEC.exists():
        pytest.skip(f"{SPEC} is not there")
    names = set(re.findall(r"\bRECONCILER_[A-Z_]+[A-Z]\b", SPEC.read_text()))
    return names | {f"{name}_FILE" for name in SECRET_SETTINGS}
