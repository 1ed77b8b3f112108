"""The deletion guards of SPEC 4.3 that the planner can decide, in the order they apply.

1. mode: the executor's (every action becomes a dry-run audit in `dry_run`).
2. ownership: `PROTECTED` (unmanaged instances never become candidates at all).
3. fresh, complete evidence: `INCOMPLETE_READ` when any server's read failed.
4. confirmation and age: `orphans` (an unconfirmed orphan is never a candidate).
5. the re-check: `INVALID_ROW` when a row that could not be read may name the instance; the
   point re-check of the database is the executor's, right before the call.
6. blast radius, per server: `EMPTY_DESIRED`, `COLLAPSE`, `MAX_DELETIONS`, `MAX_FRACTION` (one
   deletion is always within the fraction), lifted for one pass by `allow_mass_deletion`.
   `EMPTY_DESIRED` and `COLLAPSE` also hold back `mark_missing`: a vanished desired set or a
   half-empty server looks exactly like mass drift.

A held-back candidate stays in the plan with `blocked_by` set, so the executor audits it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

from reconciler.model import Action, ActionKind, Delete, Guard, PassCounts
from reconciler.planner.view import PassView, is_protected


def guard_deletes(view: PassView, candidates: Sequence[Delete]) -> tuple[Delete, ...]:
    by_server: dict[str, list[Delete]] = defaultdict(list)
    for action in candidates:
        evidence = _evidence(view, action)
        by_server[action.server].append(
            action if evidence is None else replace(action, blocked_by=evidence))
    guarded: list[Delete] = []
    for server, actions in by_server.items():
        open_count = sum(1 for a in actions if a.blocked_by is None)
        guard = blast_radius(view, server, open_count)
        if guard is None:
            guarded.extend(actions)
            continue
        guarded.extend(
            replace(a, blocked_by=guard) if a.blocked_by is None else a for a in actions
        )
    return tuple(guarded)


def _evidence(view: PassView, action: Delete) -> Guard | None:
    """Guards 2, 3 and the claims of rule 5: never lifted."""
    if is_protected(view.policy, action.instance_name):
        return Guard.PROTECTED
    if not view.complete:
        return Guard.INCOMPLETE_READ
    if view.is_claimed(action.instance_name):
        return Guard.INVALID_ROW
    return None


def blast_radius(view: PassView, server: str, deletions: int) -> Guard | None:
    """Guard 6 over one server's deletions still allowed by guards 1 to 5."""
    policy = view.policy
    if deletions == 0 or policy.allow_mass_deletion:
        return None
    managed = view.managed_total(server)
    deletions += view.recent_deletions.get(server, 0)
    mass_loss = _mass_loss(view, server)
    if mass_loss is not None:
        return mass_loss
    if deletions > policy.max_deletions:
        return Guard.MAX_DELETIONS
    if deletions > 1 and deletions > policy.max_deletion_fraction * managed:
        # One is always within: the incident itself is a server holding the orphan and its
        # replacement, and 1 of 2 would otherwise exceed any fraction below one half for ever.
        return Guard.MAX_FRACTION
    return None


def _mass_loss(view: PassView, server: str) -> Guard | None:
    managed = view.managed_total(server)
    if not view.desired_total and managed > 0:
        return Guard.EMPTY_DESIRED
    if collapsed(view, server):
        return Guard.COLLAPSE
    return None


def collapsed(view: PassView, server: str) -> bool:
    """More than half of the desired rows or of the server's managed instances vanished since
    the baseline (strictly: exactly half is not a collapse)."""
    last = view.memory.last_counts.get(server)
    if last is None:
        return False
    observed = view.managed_total(server)
    return 2 * view.desired_total < last.desired or 2 * observed < last.observed


def hold_missing(view: PassView, actions: Sequence[Action]) -> tuple[Action, ...]:
    """`mark_missing` waits while the desired set or a server looks like it lost most of itself."""
    if view.policy.allow_mass_deletion:
        return tuple(actions)
    guard = next((g for s in sorted(view.managed) if (g := _mass_loss(view, s))), None)
    if guard is None and any(
        2 * len(view.desired) < last.desired for last in view.memory.last_counts.values()
    ):
        guard = Guard.COLLAPSE
    if guard is None:
        return tuple(actions)
    return tuple(
        replace(a, blocked_by=guard) if a.kind is ActionKind.MARK_MISSING else a for a in actions
    )


def baselines(
    view: PassView, contested_servers: frozenset[str], missing_pending: bool
) -> Mapping[str, PassCounts]:
    """The counts the next pass's collapse guard compares with.

    A server's baseline moves to this pass's counts unless a collapse holds while it protects
    something (an unprotected orphan there, or a desired row that looks missing): otherwise the
    guard would hold for one pass only, and with two confirmations it would never see the orphans
    a vanished desired set creates. `allow_mass_deletion` accepts the new counts.
    """
    counts = dict(view.memory.last_counts)
    if view.scope is not None:
        return counts  # a hint is not a pass: the baseline moves with passes only
    for server, listed in view.managed.items():
        held = (
            not view.policy.allow_mass_deletion
            and collapsed(view, server)
            and (server in contested_servers or missing_pending)
        )
        if not held:
            counts[server] = PassCounts(desired=len(view.desired), observed=len(listed))
    return counts
