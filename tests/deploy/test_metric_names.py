"""Every series the alert rules and the dashboard query is one the daemon really exports, with the
labels and label values they match on, read from a live `/metrics`."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(evolution_reconciler_[a-z_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TARGET_LABELS = {"job", "instance"}
"""Added by Prometheus when it scrapes, not by the daemon."""


class Exported:
    """Sample names of the exposition, with their label names and values."""

    def __init__(self, text: str) -> None:
        self.labels: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.families: set[str] = set()
        for family in text_string_to_metric_families(text):
            if not family.name.endswith("_created"):
                self.families.add(family.name)
            for sample in family.samples:
                labels = self.labels[sample.name]
                for key, value in sample.labels.items():
                    labels[key].add(value)

    @property
    def names(self) -> set[str]:
        return set(self.labels)


@pytest.fixture(scope="module")
async def exported(live_daemon: Any) -> Exported:
    """/metrics after one Evolution call: the request series have no children before the first
    (their endpoint and code values are open-ended), every other series exists from the start."""
    metrics = live_daemon.metrics
    metrics.evolution_requests_total.labels(
        server="default", endpoint="fetchInstances", code="200").inc()
    metrics.evolution_request_duration_seconds.labels(
        server="default", endpoint="fetchInstances").observe(0.2)
    async with httpx.AsyncClient(base_url=live_daemon.url) as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return Exported(response.text)


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [(rule.get("alert") or rule["record"], rule["expr"])
            for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    queries = [(panel["title"], target["expr"])
               for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query: Any = variable.get("query")
        if variable["type"] == "query":
            queries.append((f"variable {variable['name']}", query["query"]))
    return queries


QUERIES = [("alerts.yml", *q) for q in alert_queries()] + [
    ("dashboard.json", *q) for q in dashboard_queries()]


def test_every_metric_family_is_exported(exported: Exported) -> None:
    """SPEC 6's table, as the daemon exports it (prometheus_client drops `_total` from names)."""
    spec = {"drift_instances", "observed_instances", "desired_instances", "invalid_rows",
            "reconcile", "reconcile_errors", "reconcile_duration_seconds",
            "last_attempt_timestamp_seconds", "last_success_timestamp_seconds", "actions",
            "guard_blocked", "server_degraded", "events_published", "outbox_pending",
            "evolution_requests", "evolution_request_duration_seconds", "leader", "build_info"}
    assert {f"evolution_reconciler_{name}" for name in spec} <= exported.families


@pytest.mark.parametrize(("source", "title", "expr"), QUERIES,
                         ids=[f"{s}:{t}" for s, t, _ in QUERIES])
def test_query_uses_exported_series_and_labels(exported: Exported, source: str, title: str,
                                               expr: str) -> None:
    used = METRIC.findall(expr)
    assert used or not expr.count("evolution_reconciler"), expr
    known_labels = set(TARGET_LABELS)
    for name, selector in used:
        assert name in exported.names, (
            f"{source} '{title}' queries {name}, which /metrics does not export "
            f"(exported: {sorted(n for n in exported.names if not n.endswith('_created'))})")
        labels = exported.labels[name]
        known_labels |= set(labels)
        for label, op, value in MATCHER.findall(selector):
            assert label in labels or label in TARGET_LABELS, (
                f"{source} '{title}': {name} has no label {label}")
            if label in TARGET_LABELS or "$" in value:
                continue
            wanted = value.split("|") if op in ("=~", "!~") else [value]
            for item in wanted:
                assert re.fullmatch(r"[\w.]*", item), f"cannot check the regex {value}"
                assert item in labels[label], (
                    f"{source} '{title}': {name} never has {label}={item!r} "
                    f"(exported: {sorted(labels[label])})")
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            assert label in known_labels, f"{source} '{title}': groups by unknown label {label}"


def test_the_dashboard_shows_every_metric_family(exported: Exported) -> None:
    shown = {name for _, expr in dashboard_queries() for name, _ in METRIC.findall(expr)}
    for family in exported.families:
        assert any(name == family or name.startswith(family + "_") for name in shown), (
            f"no dashboard panel shows {family}")
