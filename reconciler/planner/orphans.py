"""`orphan` and `orphan_pending`: managed instances no desired row names, and their memory.

An orphan becomes a delete candidate only once confirmed: seen in enough consecutive complete passes
and old enough, or released by a tombstone. Whether the candidate may actually be deleted is for
`guards` to say. A delete that was answered but not yet verified is confirmed here once the server
stops listing the instance, so that `instance.removed` is published exactly when it is true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from reconciler.model import (
    Delete,
    Drift,
    DriftKind,
    InstanceMemory,
    LiveState,
    ObservedInstance,
)
from reconciler.planner.view import Key, PassView, is_protected

ORPHAN = "orphan"
DUPLICATE_NUMBER = "duplicate_number"


@dataclass(frozen=True)
class OrphanDecision:
    drift: tuple[Drift, ...]
    candidates: tuple[Delete, ...]
    """Deletes of confirmed orphans, not yet guarded (`blocked_by` is None)."""
    confirmations: tuple[Delete, ...]
    """`already_gone` deletes: answered earlier, absent now; never blocked, never counted."""
    instances: Mapping[Key, InstanceMemory]
    """Memory of every server read completely (servers whose read failed are not in it)."""
    contested_servers: frozenset[str]
    """Servers holding an unprotected orphan, confirmed or not: what the collapse guard protects."""


def decide_orphans(view: PassView) -> OrphanDecision:
    drift: list[Drift] = []
    candidates: list[Delete] = []
    confirmations: list[Delete] = []
    instances: dict[Key, InstanceMemory] = {}
    contested: set[str] = set()
    numbers = live_desired_numbers(view)
    for server, listed in view.managed.items():
        for inst in listed:
            key = (server, inst.name)
            previous = view.memory.instances.get(key)
            if previous is not None and _recreated(previous, inst):
                if previous.delete_requested_at is not None:
                    confirmations.append(_confirm_removal(view, previous))
                previous = None
            base = replace(
                previous or InstanceMemory(server, inst.name, first_seen=view.now),
                instance_id=inst.instance_id or (previous.instance_id if previous else None),
            )
            if view.is_desired(inst.name):
                instances[key] = _forget_orphan_history(base)
                continue
            entry = base if view.scope else replace(  # a hint is not a pass: no streak
                base,
                orphan_since=base.orphan_since or view.now,
                orphan_streak=base.orphan_streak + 1,
            )
            instances[key] = entry
            if not is_protected(view.policy, inst.name):
                contested.add(server)
            if inst.anomaly is not None:
                detail = f"not deleted while its listing is odd: {inst.anomaly}"
                drift.append(Drift(server, inst.name, DriftKind.ORPHAN_PENDING, detail))
                continue
            confirmed, detail = _confirmation(view, inst, entry)
            if not confirmed:
                drift.append(Drift(server, inst.name, DriftKind.ORPHAN_PENDING, detail))
                continue
            reason = DUPLICATE_NUMBER if _shares_live_number(inst, numbers) else ORPHAN
            retry_at = base.next_delete_at
            if retry_at is not None and retry_at > view.now:
                detail = f"{reason}; delete retried after {retry_at.isoformat()}"
                drift.append(Drift(server, inst.name, DriftKind.ORPHAN, detail))
                continue
            drift.append(Drift(server, inst.name, DriftKind.ORPHAN, f"{reason}; {detail}"))
            candidates.append(_delete(view, inst, reason, base))
        if view.scope is not None:
            continue  # removals are verified by unfiltered listings only (SPEC 4.3)
        for remembered in view.remembered.get(server, ()):
            if remembered.instance_name in view.listed_on[server]:
                continue
            if remembered.delete_requested_at is not None:
                instances[(server, remembered.instance_name)] = remembered
                confirmations.append(_confirm_removal(view, remembered))
    return OrphanDecision(
        drift=tuple(drift),
        candidates=tuple(candidates),
        confirmations=tuple(confirmations),
        instances=instances,
        contested_servers=frozenset(contested),
    )


def _recreated(previous: InstanceMemory, inst: ObservedInstance) -> bool:
    """SPEC 3: a changed `instanceId` is a new instance, with an age and a history of its own."""
    return (previous.instance_id is not None and inst.instance_id is not None
            and previous.instance_id != inst.instance_id)


def _forget_orphan_history(entry: InstanceMemory) -> InstanceMemory:
    """Named by a row again: forget the orphan history, including any delete in flight."""
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


def live_desired_numbers(view: PassView) -> frozenset[str]:
    """The numbers desired instances are live on; a scope adds the rest of the fleet's."""
    outside = view.scope.live_numbers_outside() if view.scope else frozenset()
    return outside | frozenset(live_desired(view).values())


def live_desired(view: PassView) -> dict[str, str]:
    """Desired instance name -> the number it is live on."""
    return {
        inst.name: inst.number
        for listed in view.managed.values()
        for inst in listed
        if inst.live is LiveState.OPEN and inst.number and view.is_desired(inst.name)
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
