"""The kustomize overlays render, validate against Kubernetes' schemas, and configure the daemon
the way its settings loader and the alert rules expect."""

from __future__ import annotations

import importlib.util
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reconciler.settings import load_settings

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ("standalone", "sidecar", "production")
Resource = dict[str, Any]
Render = Callable[[Path], list[Resource]]

KUBERNETES_VERSION = "1.30.0"
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"),
                ("monitoring.coreos.com/v1", "PrometheusRule")}
SECRET_MOUNT = "/run/secrets/reconciler"


def by_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in by_kind(resources, kind) if r["metadata"]["name"] == name]
    return found


def workloads(resources: list[Resource]) -> list[Resource]:
    return by_kind(resources, "Deployment")


def reconciler_container(deployment: Resource) -> dict[str, Any]:
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                   if c["name"] == "reconciler"]
    return container


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(
        rendered: dict[str, list[Resource]], overlay: str) -> None:
    resources = rendered[overlay]
    assert workloads(resources), f"{overlay} renders no Deployment"
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fallback_renderer_agrees_with_kubectl(render: Render, python_render: Render,
                                               overlay: str) -> None:
    def keyed(resources: list[Resource]) -> dict[tuple[str, str], Resource]:
        return {(r["kind"], r["metadata"]["name"]): r for r in resources}

    directory = KUBERNETES / "overlays" / overlay
    assert keyed(python_render(directory)) == keyed(render(directory))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_reconciler_runs_locked_down_with_probes_and_resources(
        rendered: dict[str, list[Resource]], overlay: str) -> None:
    for deployment in workloads(rendered[overlay]):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert context.get("privileged", False) is False, container["name"]
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, container["name"]
        container = reconciler_container(deployment)
        assert container["args"] == ["run"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"
        liveness, readiness = container["livenessProbe"], container["readinessProbe"]
        assert liveness["httpGet"]["path"] == "/healthz"
        assert port_number(container, liveness["httpGet"]["port"]) == 9478
        assert port_number(container, readiness["httpGet"]["port"]) == 9478
        sidecar = len(pod["containers"]) > 1
        # Beside an application, /readyz would take the application out of service whenever
        # Evolution or the database is down; on its own, the reconciler is ready after a pass.
        assert readiness["httpGet"]["path"] == ("/healthz" if sidecar else "/readyz")


def test_sidecar_and_standalone_run_the_same_reconciler(
        rendered: dict[str, list[Resource]]) -> None:
    [standalone] = workloads(rendered["standalone"])
    [application] = workloads(rendered["sidecar"])
    assert len(application["spec"]["template"]["spec"]["containers"]) == 2
    ignore = {"readinessProbe"}

    def comparable(container: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in container.items() if k not in ignore}

    assert comparable(reconciler_container(standalone)) == comparable(
        reconciler_container(application))

    def reconciler_volumes(deployment: Resource) -> list[dict[str, Any]]:
        used = {m["name"] for m in reconciler_container(deployment)["volumeMounts"]}
        return [v for v in deployment["spec"]["template"]["spec"]["volumes"]
                if v["name"] in used]

    assert reconciler_volumes(standalone) == reconciler_volumes(application)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_mounted_files(rendered: dict[str, list[Resource]],
                                         overlay: str) -> None:
    resources = rendered[overlay]
    toml = one(resources, "ConfigMap", "evolution-reconciler-servers")["data"]["reconciler.toml"]
    env_config = one(resources, "ConfigMap", "evolution-reconciler-env")["data"]
    for deployment in workloads(resources):
        container = reconciler_container(deployment)
        env = {e["name"]: e for e in container["env"]}
        for name in ("RECONCILER_DATABASE_URL", "RECONCILER_REDIS_URL",
                     "RECONCILER_EVOLUTION_API_KEY"):
            assert name not in env and name not in env_config, f"{name} given in plain text"
        assert env["RECONCILER_DATABASE_URL_FILE"]["value"].startswith(SECRET_MOUNT + "/")
        assert env["RECONCILER_REDIS_URL_FILE"]["value"].startswith(SECRET_MOUNT + "/")
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == SECRET_MOUNT]
        assert mount["readOnly"] is True
        [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"]
                    if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "evolution-reconciler"
    servers = load_toml(toml)["servers"]
    assert servers
    for server in servers:
        assert "api_key" not in server
        assert server["api_key_file"].startswith(SECRET_MOUNT + "/")


def load_toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


@pytest.mark.parametrize(("overlay", "mode", "servers"), [
    ("standalone", "dry_run", ("default",)),
    ("sidecar", "dry_run", ("default",)),
    ("production", "enforce", ("br-1", "br-2")),
])
def test_the_daemon_accepts_the_rendered_settings(
        rendered: dict[str, list[Resource]], tmp_path: Path, spec_names: set[str],
        overlay: str, mode: str, servers: tuple[str, ...]) -> None:
    """Mount the ConfigMaps and a Secret into a directory and load the settings from them."""
    resources = rendered[overlay]
    for deployment in workloads(resources):
        pod = deployment["spec"]["template"]["spec"]
        container = reconciler_container(deployment)
        volumes = {v["name"]: v for v in pod["volumes"]}
        root = tmp_path / deployment["metadata"]["name"]

        def host_path(path: str, root: Path = root) -> str:
            return str(root / path.lstrip("/"))

        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            directory = Path(host_path(mount["mountPath"]))
            directory.mkdir(parents=True)
            if "configMap" in volume:
                data = one(resources, "ConfigMap", volume["configMap"]["name"])["data"]
                for key, value in data.items():
                    (directory / key).write_text(value.replace(SECRET_MOUNT,
                                                               host_path(SECRET_MOUNT)))
        env: dict[str, str] = {}
        for source in container["envFrom"]:
            env |= one(resources, "ConfigMap", source["configMapRef"]["name"])["data"]
        env |= {e["name"]: e["value"] for e in container["env"]}
        assert set(env) <= spec_names | {"RECONCILER_CONFIG"}, set(env) - spec_names
        secret_files = {v for k, v in env.items() if k.endswith("_FILE")}
        secret_files |= {s["api_key_file"] for s in load_toml(
            one(resources, "ConfigMap", "evolution-reconciler-servers")["data"]
            ["reconciler.toml"])["servers"]}
        values = {"database-url": "postgresql://reconciler:secret@db:5432/platform",
                  "redis-url": "redis://redis:6379/0"}
        for path in secret_files:
            Path(host_path(path)).write_text(values.get(Path(path).name, "an-api-key") + "\n")
        env = {k: host_path(v) if k.endswith("_FILE") or k == "RECONCILER_CONFIG" else v
               for k, v in env.items()}

        settings = load_settings(env)

        assert settings.warnings == ()
        assert settings.mode.value == mode
        assert tuple(s.name for s in settings.servers) == servers
        assert all(s.api_key == "an-api-key" for s in settings.servers)
        assert settings.database_url == values["database-url"]
        assert settings.http_port == port_number(container, "recon-metrics")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_their_pods(rendered: dict[str, list[Resource]], overlay: str) -> None:
    resources = rendered[overlay]
    [monitor] = by_kind(resources, "PodMonitor")
    for deployment in workloads(resources):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), (
            f"the PodMonitor does not scrape {deployment['metadata']['name']}")
        container = reconciler_container(deployment)
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert port_number(container, endpoint["port"]) == 9478
            assert endpoint["path"] == "/metrics"
    for budget in by_kind(resources, "PodDisruptionBudget"):
        selected = [d for d in workloads(resources)
                    if budget["spec"]["selector"]["matchLabels"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, "the PodDisruptionBudget selects no pod"


def test_production_overlay_pins_namespace_and_image(
        rendered: dict[str, list[Resource]]) -> None:
    resources = rendered["production"]
    assert {r["metadata"].get("namespace") for r in resources} == {"whatsapp"}
    [deployment] = workloads(resources)
    assert reconciler_container(deployment)["image"] == (
        "registry.example.com/evolution-reconciler:0.1.0")


def test_prometheus_rule_carries_the_alert_rules(rendered: dict[str, list[Resource]]) -> None:
    """base/prometheusrule.yaml is generated from deploy/prometheus/alerts.yml; never edited."""
    alerts = yaml.safe_load((KUBERNETES.parent / "prometheus" / "alerts.yml").read_text())
    for overlay in OVERLAYS:
        [rule] = by_kind(rendered[overlay], "PrometheusRule")
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["spec"]["groups"] == alerts["groups"], (
            "regenerate it: python deploy/kubernetes/generate_prometheusrule.py")


def test_prometheus_rule_file_is_the_generator_output() -> None:
    spec = importlib.util.spec_from_file_location(
        "generate_prometheusrule", KUBERNETES / "generate_prometheusrule.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    expected = generator.render((KUBERNETES.parent / "prometheus" / "alerts.yml").read_text())
    assert (KUBERNETES / "base" / "prometheusrule.yaml").read_text() == expected, (
        "regenerate it: python deploy/kubernetes/generate_prometheusrule.py")


def test_pod_monitor_structure(rendered: dict[str, list[Resource]]) -> None:
    [monitor] = by_kind(rendered["standalone"], "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
