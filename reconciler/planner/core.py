"""plan(): one pass's observations and memory in, the drift, the actions and the next memory out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from reconciler.model import (
    Action,
    Delete,
    DesiredState,
    Drift,
    Memory,
    Plan,
    Policy,
    ServerRead,
    StatusChange,
    Tombstone,
)
from reconciler.planner.duplicates import decide_duplicates
from reconciler.planner.guards import baselines, guard_deletes, hold_missing
from reconciler.planner.orphans import decide_orphans
from reconciler.planner.status import decide_statuses, track_connections
from reconciler.planner.view import PassView, build_view, unmanaged_drift


def plan(
    desired: DesiredState,
    reads: Sequence[ServerRead],
    memory: Memory,
    policy: Policy,
    now: datetime,
) -> Plan:
    """Pure: the same inputs give the same plan; `now` is the only clock."""
    view = build_view(desired, reads, memory, policy, now)
    orphans = decide_orphans(view)
    statuses = decide_statuses(view)
    duplicates = decide_duplicates(view)
    actions = (
        *guard_deletes(view, orphans.candidates),
        *orphans.confirmations,
        *hold_missing(view, statuses.actions),
        *duplicates.flags,
    )
    drift = {*orphans.drift, *statuses.drift, *duplicates.drift, *unmanaged_drift(view)}
    next_memory = Memory(
        instances={
            **{k: v for k, v in memory.instances.items() if k[0] not in view.managed},
            **track_connections(view, orphans.instances),
        },
        last_counts=baselines(view, orphans.contested_servers, statuses.missing_pending),
        missing_streaks=statuses.missing_streaks,
        reported_duplicates=duplicates.reported,
        tombstones=_open_tombstones(view),
    )
    return Plan(
        drift=tuple(sorted(drift, key=_drift_order)),
        actions=tuple(sorted(actions, key=_action_order)),
        memory=next_memory,
        degraded_servers=statuses.degraded_servers,
    )


def _open_tombstones(view: PassView) -> dict[str, Tombstone]:
    """A tombstone is done once its name is desired again, or is gone from every server."""
    return {
        name: tombstone
        for name, tombstone in view.memory.tombstones.items()
        if not view.is_desired(name) and (view.is_listed(name) or not view.complete)
    }


def _drift_order(d: Drift) -> tuple[str, str, str, str]:
    return (d.server, d.instance_name, d.kind.value, d.detail)


def _action_order(a: Action) -> tuple[str, str, str, str, str, bool]:
    row = str(a.row_id) if isinstance(a, StatusChange) else ""
    return (a.server, a.instance_name, a.kind.value, a.reason, row,
            isinstance(a, Delete) and a.already_gone)
