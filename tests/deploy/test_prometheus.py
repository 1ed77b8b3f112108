"""The alert rules: complete (SPEC 6), documented (severity, summary, numbers, runbook link), each
tested by promtool firing and not firing, and the dashboard's queries valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
RUNBOOK = DEPLOY / "runbook.md"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package prometheus; .ci/deploy-checks.sh "
           "installs it)")

# SPEC section 6: what the alert rules must cover, as the metric each must be built on.
SPEC_ALERTS = {
    "daemon absent": re.compile(r"absent\(evolution_reconciler_build_info"),
    "no successful pass": re.compile(r"time\(\) - .*last_success_timestamp_seconds"),
    "error ratio": re.compile(r'reconcile_total\{result="error"\}.*/.*reconcile_total', re.S),
    "drift persisting": re.compile(r"drift_instances\{kind=~\"[a-z_|]*orphan"),
    "deletion guard tripped": re.compile(r"guard_blocked_total\{guard=~\"max_deletions"),
    "server degraded": re.compile(r"server_degraded"),
    "outbox backing up": re.compile(r"outbox_pending"),
    "not exactly one leader": re.compile(r"sum by \([^)]*server[^)]*\) "
                                         r"\(evolution_reconciler_leader\) != 1"),
}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_of_the_spec_is_there() -> None:
    exprs = [rule["expr"] for rule in alert_rules()]
    for topic, pattern in SPEC_ALERTS.items():
        assert any(pattern.search(expr) for expr in exprs), f"no alert for: {topic}"


def test_every_alert_is_documented() -> None:
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        if not rule["expr"].startswith("absent("):
            assert "$value" in annotations["description"], f"{name}: no numbers in description"
        url = annotations["runbook_url"]
        assert url.split("#")[0].endswith("deploy/runbook.md"), name
        assert url.split("#")[1] in anchors, f"{name}: {url} points at no runbook heading"
        assert github_anchor(name) in anchors, f"{name}: no runbook section"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fires, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


@needs_promtool
def test_promtool_checks_and_tests_the_rules() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"])
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by what Prometheus would receive."""
    return (expr.replace("$__rate_interval", "1m")
            .replace("$job", ".*").replace("$server", ".*"))


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_has_what_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for wanted in ("drift by kind and server", "by result", "by stage", "pass duration",
                   "time since last success", "actions by outcome", "guard", "outbox",
                   "requests per second", "latency", "leader"):
        assert wanted in titles, f"no panel for {wanted}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "server"} <= variables
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
