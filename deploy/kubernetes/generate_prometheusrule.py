"""Writes base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

The alert rules live in one file, tested by promtool; the Prometheus Operator needs them wrapped in
a PrometheusRule, which kustomize cannot build from a plain file. Run this after editing
alerts.yml (tests/deploy fail while the two differ):

    .venv/bin/python deploy/kubernetes/generate_prometheusrule.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/alerts.yml by deploy/kubernetes/generate_prometheusrule.py;"
    " do not edit.\n"
)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "evolution-reconciler"},
        "spec": {"groups": alerts["groups"]},
    }


def render(alerts_text: str) -> str:
    document = prometheus_rule(yaml.safe_load(alerts_text))
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=4096, allow_unicode=True)


def main() -> int:
    TARGET.write_text(render(ALERTS.read_text()))
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
