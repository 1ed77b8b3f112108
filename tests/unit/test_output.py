"""`--output table` escapes what others control; `--output json` stays exact (SPEC 8)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from reconciler.executor import ExecutionReport
from reconciler.model import (
    Delete,
    DesiredState,
    Drift,
    DriftKind,
    Memory,
    Mode,
    Outcome,
    Plan,
    ServerInventory,
    ServerReadError,
    Stage,
)
from reconciler.output import escape_controls, render_json, render_table
from reconciler.recorder import PassResult, StageError

FORGED = "clinic-x\nSERVER  INSTANCE  DRIFT\x1b[2J\r\x85\u2028\x9b31m"
"""A name that tries to add lines, clear the screen and colour the terminal."""
ESCAPED = r"clinic-x\nSERVER  INSTANCE  DRIFT\x1b[2J\r\x85\u2028\x9b31m"


def result(name: str) -> PassResult:
    delete = Delete(server="s1", instance_name=name, reason=f"orphan {name}")
    return PassResult(
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        servers=("s1", "s2"),
        desired=DesiredState(()),
        reads=(ServerInventory("s1", "v2", f"2.3.6{name}", None, ()),
               ServerReadError("s2", "read_observed", f"HTTP 500: {name}")),
        plan=Plan(drift=(Drift("s1", name, DriftKind.ORPHAN, f"age {name}"),),
                  actions=(delete,), memory=Memory(), degraded_servers=frozenset({name})),
        report=ExecutionReport(outcomes=[(delete, Outcome.FAILED, f"HTTP 500: {name}")]),
        errors=[StageError("s2", Stage.READ_OBSERVED, f"HTTP 500: {name}")],
    )


@pytest.mark.parametrize("plan_only", [True, False])
def test_a_name_in_a_table_cannot_forge_a_line_or_a_terminal_sequence(plan_only: bool) -> None:
    table = render_table(result(FORGED), Mode.ENFORCE, plan_only=plan_only)
    assert table.splitlines() == table.split("\n"), "no line break but the table's own"
    assert len(table.splitlines()) == len(
        render_table(result("clinic-x"), Mode.ENFORCE, plan_only=plan_only).splitlines())
    assert all(line.isprintable() for line in table.split("\n"))
    assert table.count(ESCAPED) >= 6


def test_escaping_shows_each_control_character_as_its_escape() -> None:
    assert escape_controls(FORGED) == ESCAPED
    assert escape_controls("plain clinic-é 名前") == "plain clinic-é 名前"


@pytest.mark.parametrize("plan_only", [True, False])
def test_json_output_keeps_names_exact(plan_only: bool) -> None:
    report = json.loads(render_json(result(FORGED), Mode.ENFORCE, plan_only=plan_only))
    assert report["drift"][0]["instance_name"] == FORGED
    assert report["actions"][0]["instance_name"] == FORGED
    assert report["servers"]["s2"]["error"] == f"HTTP 500: {FORGED}"
