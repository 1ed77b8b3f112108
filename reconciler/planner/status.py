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
from datetime import datetime

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
from reconciler.planner.view import PassView
from reconciler.reasons import INSTANCE_MISSING, classify

RECONNECTED = "reconnected"
_TRACKED = frozenset(RowStatus)
"""Rows in any other status are left alone: the daemon does not know what they mean."""
_MIN_RESTART_WAVE = 3
_OPEN, _UNKNOWN, _CONNECTED = LiveState.OPEN, LiveState.UNKNOWN, RowStatus.CONNECTED
"""Bound once: an enum member read through its class is slow in a loop over every row."""
_CLOSED = classify(None)


@dataclass(frozen=True)
class StatusDecision:
    drift: tuple[Drift, ...]
    actions: tuple[StatusChange, ...]
    degraded_servers: frozenset[str]
    missing_streaks: Mapping[str, int]
    missing_pending: bool
    """Some enabled row looks missing and is not marked yet: what the collapse guard protects."""
    standings: Mapping[str, tuple[Standing, ...]]
    """Every tracked row's part in its server's restart wave, by instance name (what a targeted
    plan counts with, `standings`)."""


class _Parts:
    """Standings by instance name; equal parts are one shared object (a server has three kinds),
    so that 10,000 rows do not make 10,000 of them."""

    def __init__(self) -> None:
        self.by_name: dict[str, tuple[Standing, ...]] = {}
        self._shared: dict[tuple[str, bool, bool], tuple[Standing]] = {}

    def add(self, name: str, server: str, connected: bool, strained: bool) -> None:
        kind = (server, connected, strained)
        one = self._shared.get(kind)
        if one is None:
            one = self._shared[kind] = (Standing(server, connected, strained),)
        had = self.by_name.get(name)
        self.by_name[name] = one if had is None else (*had, *one)


def track_connection(
    entry: InstanceMemory, inst: ObservedInstance, now: datetime
) -> InstanceMemory:
    """Disconnect hysteresis: the first "not connected" starts the clock, OPEN stops it, UNKNOWN
    says nothing. An entry already as the verdict leaves it is returned as the very object."""
    live = inst.live
    if live is _UNKNOWN:
        return entry
    if live is _OPEN:
        if (entry.not_connected_since is None and entry.not_connected_reason is None
                and entry.last_live == live):
            return entry
        return replace(entry, not_connected_since=None, not_connected_reason=None, last_live=live)
    reason = disconnect_of(inst).reason
    if (entry.not_connected_since is not None and entry.not_connected_reason == reason
            and entry.last_live == live):
        return entry
    return replace(
        entry,
        not_connected_since=entry.not_connected_since or now,
        not_connected_reason=reason,
        last_live=live,
    )


def decide_statuses(view: PassView) -> StatusDecision:
    drift: list[Drift] = []
    actions: list[StatusChange] = []
    waiting: list[StatusChange] = []
    connected: Counter[str] = Counter()
    strained: Counter[str] = Counter()
    parts = _Parts()
    rows = tracked_rows(view)
    judged = view.judged
    for row in rows:
        inst = judged(row.instance_name)
        if inst is None:
            continue
        server, live = inst.server, inst.live
        is_connected, is_strained = row.status == _CONNECTED, False
        if is_connected:
            connected[server] += 1
            if live is not _OPEN and live is not _UNKNOWN:  # a verdict of "not connected"
                why = disconnect_of(inst)
                if why.terminal:
                    actions.append(_mark_disconnected(view, row, inst, why))
                else:
                    is_strained = True
                    strained[server] += 1
                    if _confirmed_down(view, inst):
                        waiting.append(_mark_disconnected(view, row, inst, why))
        elif live is _OPEN and inst.owner_jid:
            actions.append(_mark_connected(view, row, inst))
        parts.add(row.instance_name, server, is_connected, is_strained)
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
        standings=parts.by_name,
    )


def tracked_rows(view: PassView) -> list[DesiredInstance]:
    return [r for r in view.desired if r.enabled and r.status in _TRACKED]


def standings(view: PassView) -> Mapping[str, tuple[Standing, ...]]:
    """Every tracked row's part in its server's restart wave: connected by its row, and
    strained when transiently not live (a "not connected" verdict without a terminal reason)."""
    return decide_statuses(view).standings


def disconnect_of(inst: ObservedInstance) -> Disconnect:
    """The recorded reason, else the plain non-terminal close of an instance not live."""
    return inst.disconnect or _CLOSED


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
