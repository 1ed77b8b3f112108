"""plan(): one pass's observations and memory in, the drift, the actions and the next memory out."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

from reconciler.model import (
    Action,
    Delete,
    DesiredState,
    Drift,
    Memory,
    ObservedInstance,
    Plan,
    Policy,
    ServerRead,
    StatusChange,
    Tombstone,
)
from reconciler.planner.duplicates import DuplicateDecision, decide_duplicates
from reconciler.planner.guards import baselines, guard_deletes, hold_missing
from reconciler.planner.orphans import decide_orphans, live_desired
from reconciler.planner.scope import Population, Scope, Standing
from reconciler.planner.status import decide_statuses, standings
from reconciler.planner.view import PassView, build_view, unmanaged_drift

T = TypeVar("T")


def plan(
    desired: DesiredState,
    reads: Sequence[ServerRead],
    memory: Memory,
    policy: Policy,
    now: datetime,
    *,
    scope: Scope | None = None,
    recent_deletions: Mapping[str, int] | None = None,
) -> Plan:
    """Pure: the same inputs give the same plan; `now` is the only clock.

    With `scope` (a targeted reconcile, built by `scope.restricted`), the inputs hold only the
    scope's names and the plan decides for them only; the duplicates, `missing` and the
    baselines are left to passes. `recent_deletions` are counted by the blast radius.

    An unchanged memory entry is the input object: `plan.memory.instances[key] is
    memory.instances[key]` whenever the pass left that instance's memory as it was, so that a
    store can skip writing it with `new is old`.
    """
    view = build_view(desired, reads, memory, policy, now, scope, recent_deletions)
    return _decide(view)[0]


def plan_and_population(
    desired: DesiredState,
    reads: Sequence[ServerRead],
    memory: Memory,
    policy: Policy,
    now: datetime,
    previous: Population | None = None,
    read_now: Collection[str] | None = None,
    *,
    recent_deletions: Mapping[str, int] | None = None,
) -> tuple[Plan, Population]:
    """`plan()` and `population()` of one pass, from the one view both index the inputs into."""
    view = build_view(desired, reads, memory, policy, now, None, recent_deletions)
    decided, live_numbers, parts = _decide(view)
    return decided, _population(view, desired, previous, read_now, live_numbers, parts)


def population(
    desired: DesiredState,
    reads: Sequence[ServerRead],
    memory: Memory,
    policy: Policy,
    now: datetime,
    previous: Population | None = None,
    read_now: Collection[str] | None = None,
) -> Population:
    """What a pass saw, as the counts targeted plans take (a failed read keeps its previous).
    Only the servers of `read_now` (default: all) were listed by this pass itself; the others
    came from their leaders' snapshots and leave the listing a tombstone may delete from alone."""
    view = build_view(desired, reads, memory, policy, now)
    return _population(view, desired, previous, read_now, live_desired(view), standings(view))


def _decide(
    view: PassView,
) -> tuple[Plan, Mapping[str, str], Mapping[str, tuple[Standing, ...]]]:
    """The plan, and what a population takes that it gathered on the way: the live numbers of
    desired instances and the rows' standings."""
    memory = view.memory
    orphans = decide_orphans(view)
    statuses = decide_statuses(view)
    duplicates = (decide_duplicates(view) if view.scope is None
                  else DuplicateDecision((), (), memory.reported_duplicates))
    actions = (
        *guard_deletes(view, orphans.candidates),
        *orphans.confirmations,
        *hold_missing(view, statuses.actions),
        *duplicates.flags,
    )
    drift = {*orphans.drift, *statuses.drift, *duplicates.drift, *unmanaged_drift(view)}
    managed = view.managed
    next_memory = Memory(
        instances={
            **{k: v for k, v in memory.instances.items() if k[0] not in managed},
            **orphans.instances,
        },
        last_counts=baselines(view, orphans.contested_servers, statuses.missing_pending),
        missing_streaks=statuses.missing_streaks,
        reported_duplicates=duplicates.reported,
        tombstones=_open_tombstones(view),
    )
    decided = Plan(
        drift=tuple(sorted(drift, key=_drift_order)),
        actions=tuple(sorted(actions, key=_action_order)),
        memory=next_memory,
        degraded_servers=statuses.degraded_servers,
    )
    return decided, orphans.live_numbers, statuses.standings


def _population(
    view: PassView,
    desired: DesiredState,
    previous: Population | None,
    read_now: Collection[str] | None,
    live_numbers: Mapping[str, str],
    parts: Mapping[str, tuple[Standing, ...]],
) -> Population:
    now = view.now
    read_at = dict(previous.read_at) if previous else {}
    listing = dict(previous.listing) if previous else {}
    observed: dict[str, Mapping[str, ObservedInstance]] = (
        dict(previous.observed) if previous else {})
    for server, listed in view.observed.items():
        if read_now is None or server in read_now:
            read_at[server] = now
            listing[server] = frozenset(listed)
        observed[server] = listed
    return Population(
        read_at=read_at, listing=listing, observed=observed, rows=view.rows_by_name,
        standings=parts, live_numbers=live_numbers, claimed=desired.claimed,
        invalid_rows=desired.invalid_rows)


def updated(
    population: Population,
    names: frozenset[str],
    desired: DesiredState,
    reads: Sequence[ServerRead],
    policy: Policy,
    now: datetime,
) -> Population:
    """The population with `names` as a targeted reconcile just read them (`restricted`'s
    inputs): their rows, observations, standings and live numbers; the listings stay."""
    view = build_view(desired, reads, Memory(), policy, now)
    observed = dict(population.observed)
    for server, listed in view.managed.items():
        kept = {n: i for n, i in observed.get(server, {}).items() if n not in names}
        observed[server] = {**kept, **{i.name: i for i in listed}}
    parts, numbers = standings(view), live_desired(view)

    def merged(old: Mapping[str, T], new: Mapping[str, T]) -> dict[str, T]:
        return {**{n: v for n, v in old.items() if n not in names}, **new}

    return replace(population, observed=observed,
                   rows=merged(population.rows, view.rows_by_name),
                   standings=merged(population.standings, parts),
                   live_numbers=merged(population.live_numbers, numbers))


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
