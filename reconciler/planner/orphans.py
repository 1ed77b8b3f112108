"""`orphan` and `orphan_pending`: managed instances no desired row names, and their memory.

An orphan becomes a delete candidate only once confirmed: seen in enough consecutive complete passes
and old enough, or released by a tombstone. Whether the candidate may actually be deleted is for
`guards` to say. A delete that was answered but not yet verified is confirmed here once the server
stops listing the instance, so that `instance.removed` is published exactly when it is true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from reconciler.model import (
    Delete,
    Drift,
    DriftKind,
    InstanceMemory,
    LiveState,
    ObservedInstance,
)
from reconciler.planner.status import track_connection
from reconciler.planner.view import Key, PassView, is_protected

ORPHAN = "orphan"
DUPLICATE_NUMBER = "duplicate_number"
_OPEN = LiveState.OPEN
_ORPHAN = DriftKind.ORPHAN
_ORPHAN_PENDING = DriftKind.ORPHAN_PENDING
"""Bound once: an enum member read through its class is slow in a loop over every instance."""


@dataclass(frozen=True)
class OrphanDecision:
    drift: tuple[Drift, ...]
    candidates: tuple[Delete, ...]
    """Deletes of confirmed orphans, not yet guarded (`blocked_by` is None)."""
    confirmations: tuple[Delete, ...]
    """`already_gone` deletes: answered earlier, absent now; never blocked, never counted."""
    instances: Mapping[Key, InstanceMemory]
    """Memory of every server read completely (servers whose read failed are not in it), its
    connections tracked (`status.track_connection`); an entry this pass leaves as it was is the
    input object itself."""
    contested_servers: frozenset[str]
    """Servers holding an unprotected orphan, confirmed or not: what the collapse guard protects."""
    live_numbers: Mapping[str, str]
    """`live_desired(view)`, gathered on the way."""


def decide_orphans(view: PassView) -> OrphanDecision:
    drift: list[Drift] = []
    confirmed: list[tuple[ObservedInstance, InstanceMemory, str]] = []
    confirmations: list[Delete] = []
    instances: dict[Key, InstanceMemory] = {}
    contested: set[str] = set()
    live: dict[str, str] = {}
    remembered, now, is_desired = view.memory.instances, view.now, view.is_desired
    for server, listed in view.managed.items():
        for inst in listed:
            name = inst.name
            key = (server, name)
            previous = remembered.get(key)
            if previous is not None and previous.instance_id == inst.instance_id:
                base = previous  # the instance remembered, under the same id
            else:
                if previous is not None and _recreated(previous, inst):
                    if previous.delete_requested_at is not None:
                        confirmations.append(_confirm_removal(view, previous))
                    previous = None
                base = _identified(previous, inst, now)
            if is_desired(name):
                instances[key] = track_connection(_forget_orphan_history(base), inst, now)
                if inst.live is _OPEN and inst.number:
                    live[name] = inst.number
                continue
            entry = base if view.scope else replace(  # a hint is not a pass: no streak
                base,
                orphan_since=base.orphan_since or now,
                orphan_streak=base.orphan_streak + 1,
            )
            instances[key] = track_connection(entry, inst, now)
            if not is_protected(view.policy, name):
                contested.add(server)
            if inst.anomaly is not None:
                detail = f"not deleted while its listing is odd: {inst.anomaly}"
                drift.append(Drift(server, name, _ORPHAN_PENDING, detail))
                continue
            ripe, detail = _confirmation(view, inst, entry)
            if not ripe:
                drift.append(Drift(server, name, _ORPHAN_PENDING, detail))
                continue
            confirmed.append((inst, entry, detail))
        for removed in view.removals.get(server, ()):
            instances[(server, removed.instance_name)] = removed
            confirmations.append(_confirm_removal(view, removed))
    candidates: list[Delete] = []
    if confirmed:  # the live numbers are complete once every instance was seen
        numbers = (view.scope.live_numbers_outside() if view.scope else frozenset()) | frozenset(
            live.values())
        for inst, entry, detail in confirmed:
            reason = DUPLICATE_NUMBER if _shares_live_number(inst, numbers) else ORPHAN
            retry_at = entry.next_delete_at
            if retry_at is not None and retry_at > now:
                detail = f"{reason}; delete retried after {retry_at.isoformat()}"
                drift.append(Drift(inst.server, inst.name, _ORPHAN, detail))
                continue
            drift.append(Drift(inst.server, inst.name, _ORPHAN, f"{reason}; {detail}"))
            candidates.append(_delete(view, inst, reason, entry))
    return OrphanDecision(
        drift=tuple(drift),
        candidates=tuple(candidates),
        confirmations=tuple(confirmations),
        instances=instances,
        contested_servers=frozenset(contested),
        live_numbers=live,
    )


def _recreated(previous: InstanceMemory, inst: ObservedInstance) -> bool:
    """SPEC 3: a changed `instanceId` is a new instance, with an age and a history of its own."""
    return (previous.instance_id is not None and inst.instance_id is not None
            and previous.instance_id != inst.instance_id)


def _identified(
    previous: InstanceMemory | None, inst: ObservedInstance, now: datetime
) -> InstanceMemory:
    """The entry of `inst` (first seen now if new) under the server's latest `instanceId`."""
    if previous is None:
        return InstanceMemory(inst.server, inst.name, first_seen=now,
                              instance_id=inst.instance_id or None)
    instance_id = inst.instance_id or previous.instance_id
    if instance_id == previous.instance_id:
        return previous
    return replace(previous, instance_id=instance_id)


def _forget_orphan_history(entry: InstanceMemory) -> InstanceMemory:
    """Named by a row again: forget the orphan history, including any delete in flight."""
    if (entry.orphan_since is None and entry.orphan_streak == 0
            and entry.delete_requested_at is None and entry.delete_reason is None
            and entry.delete_event_id is None and entry.delete_attempts == 0
            and entry.next_delete_at is None):
        return entry
    return replace(
        entry,
        orphan_since=None,
        orphan_streak=0,
        delete_requested_at=None,
        delete_reason=None,
        delete_event_id=None,
        delete_attempts=0,
        next_delete_at=None,
    )


def _confirmation(
    view: PassView, inst: ObservedInstance, entry: InstanceMemory
) -> tuple[bool, str]:
    """SPEC 4.3 rule 4: enough consecutive passes and old enough, or released by a tombstone."""
    if inst.name in view.memory.tombstones:
        if view.scope is None or view.scope.listed_lately(inst.server, inst.name, view.now):
            return True, "released by a tombstone"
        return False, "released by a tombstone; waits for a complete listing that holds it"
    if view.scope is not None:
        return False, "only a tombstone lets a hint delete; waits for the passes"
    policy = view.policy
    born = inst.created_at or entry.first_seen
    age = view.now - born
    source = "created" if inst.created_at else "first seen"
    grace = int(policy.orphan_grace.total_seconds())
    detail = (
        f"orphan in {entry.orphan_streak}/{policy.orphan_confirmations} passes, "
        f"{source} {int(age.total_seconds())}s ago (grace {grace}s)"
    )
    confirmed = entry.orphan_streak >= policy.orphan_confirmations and age >= policy.orphan_grace
    return confirmed, detail


def live_desired(view: PassView) -> dict[str, str]:
    """Desired instance name -> the number it is live on."""
    return {
        inst.name: inst.number
        for listed in view.managed.values()
        for inst in listed
        if inst.live is _OPEN and inst.number and view.is_desired(inst.name)
    }


def _shares_live_number(inst: ObservedInstance, numbers: frozenset[str]) -> bool:
    """The incident: a forgotten live session on the number a desired instance now serves."""
    return inst.live is LiveState.OPEN and inst.number is not None and inst.number in numbers


def _delete(view: PassView, inst: ObservedInstance, reason: str, entry: InstanceMemory) -> Delete:
    settled = inst.live is LiveState.CLOSE or (
        inst.live is LiveState.UNKNOWN and inst.stored_status == "close"
    )
    return Delete(
        server=inst.server,
        instance_name=inst.name,
        reason=reason,
        organization_id=view.organization_id(inst.name),
        logout_first=not settled,
        event_id=entry.delete_event_id,
    )


def _confirm_removal(view: PassView, entry: InstanceMemory) -> Delete:
    """An earlier delete took effect: publish its removal under its one event id."""
    return Delete(
        server=entry.server,
        instance_name=entry.instance_name,
        reason=entry.delete_reason or ORPHAN,
        organization_id=view.organization_id(entry.instance_name),
        already_gone=True,
        event_id=entry.delete_event_id,
    )
