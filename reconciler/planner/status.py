"""`disconnected`, `reconnected`, `missing`, the restart guard: the status of enabled rows.

The live verdict decides, never the stored status: OPEN is connected, CLOSE and CONNECTING are not,
UNKNOWN is no verdict at all (a probe that failed says nothing about the phone). A transient
"not connected" must hold across two observations `disconnect_after` apart, because Evolution is
already reconnecting; a terminal reason needs a human, so it is marked at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

from reconciler.model import (
    FLEET,
    ActionKind,
    DesiredInstance,
    Disconnect,
    Drift,
    DriftKind,
    InstanceMemory,
    LiveState,
    ObservedInstance,
    RowStatus,
    StatusChange,
)
from reconciler.planner.scope import Standing
from reconciler.planner.view import Key, PassView
from reconciler.reasons import INSTANCE_MISSING, classify

RECONNECTED = "reconnected"
_TRACKED = frozenset(RowStatus)
"""Rows in any other status are left alone: the daemon does not know what they mean."""
_MIN_RESTART_WAVE = 3


@dataclass(frozen=True)
class StatusDecision:
    drift: tuple[Drift, ...]
    actions: tuple[StatusChange, ...]
    degraded_servers: frozenset[str]
    missing_streaks: Mapping[str, int]
    missing_pending: bool
    """Some enabled row looks missing and is not marked yet: what the collapse guard protects."""


def verdict(live: LiveState) -> bool | None:
    """Connected, not connected, or no verdict."""
    if live is LiveState.OPEN:
        return True
    if live is LiveState.UNKNOWN:
        return None
    return False


def track_connections(
    view: PassView, instances: Mapping[Key, InstanceMemory]
) -> dict[Key, InstanceMemory]:
    """Disconnect hysteresis: the first "not connected" starts the clock, OPEN stops it."""
    tracked = dict(instances)
    for server, listed in view.managed.items():
        for inst in listed:
            key = (server, inst.name)
            entry = tracked[key]
            seen = verdict(inst.live)
            if seen is True:
                tracked[key] = replace(
                    entry, not_connected_since=None, not_connected_reason=None,
                    last_live=inst.live,
                )
            elif seen is False:
                tracked[key] = replace(
                    entry,
                    not_connected_since=entry.not_connected_since or view.now,
                    not_connected_reason=disconnect_of(inst).reason,
                    last_live=inst.live,
                )
    return tracked


def decide_statuses(view: PassView) -> StatusDecision:
    drift: list[Drift] = []
    actions: list[StatusChange] = []
    waiting: list[StatusChange] = []
    connected: Counter[str] = Counter()
    strained: Counter[str] = Counter()
    rows = tracked_rows(view)
    for row in rows:
        copies = view.copies_of(row.instance_name)
        if not copies:
            continue
        inst = next((c for c in copies if c.live is LiveState.OPEN), copies[0])
        part = standing(row, inst)
        if part.connected:
            connected[inst.server] += 1
            strained[inst.server] += part.strained
            if verdict(inst.live) is not False:
                continue
            why = disconnect_of(inst)
            if why.terminal:
                actions.append(_mark_disconnected(view, row, inst, why))
            elif _confirmed_down(view, inst):
                waiting.append(_mark_disconnected(view, row, inst, why))
        elif inst.live is LiveState.OPEN and inst.owner_jid:
            actions.append(_mark_connected(view, row, inst))
    if view.scope is not None:
        for server in {*connected, *(w.server for w in waiting)}:
            outside = view.scope.wave_outside(server)
            connected[server] += outside[0]
            strained[server] += outside[1]
    degraded = frozenset(
        server
        for server, n in strained.items()
        if n >= _MIN_RESTART_WAVE and n > view.policy.mass_disconnect_fraction * connected[server]
    )
    actions.extend(a for a in waiting if a.server not in degraded)
    for action in actions:
        kind = DriftKind.RECONNECTED if action.kind is ActionKind.MARK_CONNECTED else (
            DriftKind.DISCONNECTED
        )
        drift.append(Drift(action.server, action.instance_name, kind, action.reason))
    missing = _decide_missing(view, rows)
    return StatusDecision(
        drift=(*drift, *missing.drift),
        actions=(*actions, *missing.actions),
        degraded_servers=degraded,
        missing_streaks=missing.streaks,
        missing_pending=missing.pending,
    )


def tracked_rows(view: PassView) -> list[DesiredInstance]:
    return [r for r in view.desired if r.enabled and r.status in _TRACKED]


def standing(row: DesiredInstance, inst: ObservedInstance) -> Standing:
    """A row's part in the restart wave: connected by its row, and transiently not live."""
    connected = row.status == RowStatus.CONNECTED
    strained = connected and verdict(inst.live) is False and not disconnect_of(inst).terminal
    return Standing(inst.server, connected, strained)


def standings(view: PassView) -> dict[str, tuple[Standing, ...]]:
    """Every tracked row's standing, by instance name (what a targeted plan counts with)."""
    parts: dict[str, tuple[Standing, ...]] = {}
    for row in tracked_rows(view):
        copies = view.copies_of(row.instance_name)
        if copies:
            inst = next((c for c in copies if c.live is LiveState.OPEN), copies[0])
            parts[row.instance_name] = (*parts.get(row.instance_name, ()), standing(row, inst))
    return parts


def disconnect_of(inst: ObservedInstance) -> Disconnect:
    """The recorded reason, else the plain non-terminal close of an instance not live."""
    return inst.disconnect or classify(None)


def _confirmed_down(view: PassView, inst: ObservedInstance) -> bool:
    """Two observations at least `disconnect_after` apart: the earlier one is in memory.

    A zero `disconnect_after` means no hysteresis: the first observation is enough (SPEC 8).
    """
    if not view.policy.disconnect_after:
        return True
    entry = view.memory.instances.get((inst.server, inst.name))
    since = entry.not_connected_since if entry else None
    return since is not None and view.now - since >= view.policy.disconnect_after


def _mark_disconnected(
    view: PassView, row: DesiredInstance, inst: ObservedInstance, why: Disconnect
) -> StatusChange:
    return StatusChange(
        kind=ActionKind.MARK_DISCONNECTED,
        server=inst.server,
        instance_name=row.instance_name,
        reason=why.reason,
        organization_id=view.organization_id(row.instance_name, row),
        row_id=row.id,
        expected_status=row.status,
        disconnect_reason=why.reason,
    )


def _mark_connected(view: PassView, row: DesiredInstance, inst: ObservedInstance) -> StatusChange:
    return StatusChange(
        kind=ActionKind.MARK_CONNECTED,
        server=inst.server,
        instance_name=row.instance_name,
        reason=RECONNECTED,
        organization_id=view.organization_id(row.instance_name, row),
        row_id=row.id,
        expected_status=row.status,
    )


@dataclass(frozen=True)
class _Missing:
    drift: tuple[Drift, ...]
    actions: tuple[StatusChange, ...]
    streaks: Mapping[str, int]
    pending: bool


def _decide_missing(view: PassView, rows: list[DesiredInstance]) -> _Missing:
    """Absent from every server, judged only when every server was read completely."""
    absent = sorted({r.instance_name for r in rows if not view.is_listed(r.instance_name)})
    if view.scope is not None:  # judged by passes that read every server (SPEC 4.1)
        return _Missing((), (), view.memory.missing_streaks, False)
    if not view.complete:
        known = view.memory.missing_streaks
        kept = {name: known[name] for name in absent if name in known}
        return _Missing((), (), kept, False)
    streaks = {name: view.memory.missing_streaks.get(name, 0) + 1 for name in absent}
    drift: dict[str, Drift] = {}
    actions: list[StatusChange] = []
    pending = False
    for row in rows:
        name = row.instance_name
        if name not in streaks:
            continue
        if row.status == RowStatus.DISCONNECTED and row.disconnect_reason == INSTANCE_MISSING:
            drift[name] = Drift(FLEET, name, DriftKind.MISSING, INSTANCE_MISSING)
            continue
        pending = True
        if streaks[name] >= view.policy.orphan_confirmations:
            drift[name] = Drift(FLEET, name, DriftKind.MISSING, INSTANCE_MISSING)
            actions.append(_mark_missing(view, row))
    return _Missing(tuple(drift.values()), tuple(actions), streaks, pending)


def _mark_missing(view: PassView, row: DesiredInstance) -> StatusChange:
    return StatusChange(
        kind=ActionKind.MARK_MISSING,
        server=FLEET,
        instance_name=row.instance_name,
        reason=INSTANCE_MISSING,
        organization_id=view.organization_id(row.instance_name, row),
        row_id=row.id,
        expected_status=row.status,
        disconnect_reason=INSTANCE_MISSING,
    )
