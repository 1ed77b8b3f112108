"""The runbook's instructions work: its SQL runs against the daemon's real schema, its commands
parse, and its one-off pod recipe turns the rendered Deployment into a valid Pod."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes_validate
import pytest
import yaml

from reconciler.cli import build_parser
from reconciler.store import Store

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = (REPO / "deploy" / "runbook.md").read_text()
SQL_BLOCKS = re.findall(r"```sql\n(.*?)```", RUNBOOK, re.S)
COMMAND = re.compile(r"\breconciler ((?:once|plan|run|migrate|install-trigger|check|demo)"
                     r"(?: --?[\w-]+(?: (?:json|table))?)*)")


def test_runbook_covers_the_essentials() -> None:
    assert "reconciler plan" in RUNBOOK
    assert "--allow-mass-deletion" in RUNBOOK
    assert "reconciler.audit_log" in RUNBOOK
    assert len(SQL_BLOCKS) >= 5


def test_runbook_commands_parse() -> None:
    commands = {m.group(1) for m in COMMAND.finditer(RUNBOOK)}
    assert {"plan", "check", "once --allow-mass-deletion"} <= commands
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command))


@pytest.mark.parametrize("sql", SQL_BLOCKS, ids=[f"sql{i}" for i in range(len(SQL_BLOCKS))])
async def test_runbook_sql_runs_against_the_daemons_schema(database_url: str, db_names: Any,
                                                           sql: str) -> None:
    store = await Store.connect(database_url, integrations_table=db_names.integrations_table,
                                schema=db_names.schema)
    try:
        await store.migrate()
    finally:
        await store.close()
    app_schema, table = db_names.integrations_table.split(".")
    query = (sql.replace("reconciler.", f'"{db_names.schema}".')
             .replace("healthcare.integrations", f'"{app_schema}"."{table}"'))
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.fetch(query)
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()


class _Rollback(Exception):
    """Leaves whatever a runbook statement did uncommitted."""


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("kubectl") is None,
                    reason="jq or kubectl is not installed")
def test_one_off_pod_recipe_yields_a_valid_pod() -> None:
    [program] = re.findall(r"jq '\n(.*?)'", RUNBOOK, re.S)
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / "kubernetes" / "overlays" / "standalone")],
        check=True, capture_output=True, text=True, timeout=60).stdout
    [deployment] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    out = subprocess.run(["jq", program], input=json.dumps(deployment), check=True,
                         capture_output=True, text=True, timeout=30).stdout
    overrides = json.loads(out)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reconciler-once"},
           "spec": overrides["spec"]}
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["once", "--dry-run", "--allow-mass-deletion"]
    assert build_parser().parse_args(container["args"]).allow_mass_deletion
    mounted = {m["name"] for m in container["volumeMounts"]}
    assert {v["name"] for v in pod["spec"]["volumes"]} == mounted
    assert pod["spec"]["restartPolicy"] == "Never"
