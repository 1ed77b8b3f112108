"""A perfect executor, for the idempotence properties: it applies a plan's actions to the inputs."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from reconciler import planner
from reconciler.model import (
    Action,
    ActionKind,
    DeleteResult,
    DesiredInstance,
    Mode,
    Plan,
    RowStatus,
    ServerInventory,
)
from tests.planner.strategies import Scenario


def taken(plan: Plan, mode: Mode) -> list[Action]:
    """Actions an executor would carry out. A dry run re-plans its flags every pass by design:
    nothing was published, so nothing is remembered as reported."""
    return [
        a for a in plan.actions
        if a.blocked_by is None and not (a.kind is ActionKind.FLAG and mode is Mode.DRY_RUN)
    ]


def _apply_to_row(row: DesiredInstance, action: Action) -> DesiredInstance:
    if action.row_id != row.id or action.expected_status != row.status:
        return row
    if action.kind is ActionKind.MARK_CONNECTED:
        return replace(row, status=RowStatus.CONNECTED.value, disconnect_reason=None)
    return replace(row, status=RowStatus.DISCONNECTED.value,
                   disconnect_reason=action.disconnect_reason)


def apply(scenario: Scenario, plan: Plan, now: datetime | None = None) -> Scenario:
    """Deletes verified at once, guarded status updates applied, then the next pass's inputs."""
    actions = [a for a in plan.actions if a.blocked_by is None]
    deleted = {(a.server, a.instance_name) for a in actions if a.kind is ActionKind.DELETE}
    rows = scenario.desired.instances
    for action in actions:
        if action.kind in (ActionKind.MARK_CONNECTED, ActionKind.MARK_DISCONNECTED,
                           ActionKind.MARK_MISSING):
            rows = tuple(_apply_to_row(r, action) for r in rows)
    reads = tuple(
        replace(r, instances=tuple(i for i in r.instances if (r.server, i.name) not in deleted))
        if isinstance(r, ServerInventory) else r
        for r in scenario.reads
    )
    outcomes = [(a, DeleteResult.VERIFIED) for a in actions if a.kind is ActionKind.DELETE]
    return replace(
        scenario,
        desired=replace(scenario.desired, instances=rows),
        reads=reads,
        memory=planner.record_outcomes(plan.memory, outcomes, scenario.now),
        now=now or scenario.now,
    )
