"""A targeted plan (SPEC 4.5) reaches the full pass's verdict for the same state."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from reconciler import planner
from reconciler.model import (
    ActionKind,
    Disconnect,
    DriftKind,
    Guard,
    InstanceMemory,
    LiveState,
    Memory,
    Plan,
    Policy,
    ServerInventory,
    ServerRead,
    Tombstone,
)
from reconciler.model import DesiredState as State
from tests.planner.builders import ENFORCE, desired, inst, name, row, run, server
from tests.planner.strategies import NOW, ORGS, ago

TERMINAL = Disconnect("device_removed", True, 401)
TRANSIENT = Disconnect("connection_lost", False, 408)
WINDOW = timedelta(seconds=30)


def targeted(target: str, state: State, reads: list[ServerRead], memory: Memory,
             policy: Policy = ENFORCE, recent: dict[str, int] | None = None) -> Plan:
    """What a hint for `target` decides: its rows, its fresh reads, its memory, the counts of
    the population the same state leaves."""
    population = planner.population(state, reads, memory, policy, NOW)
    names = frozenset({target})
    fresh: list[ServerRead] = [
        replace(r, instances=tuple(i for i in r.instances if i.name == target))
        for r in reads if isinstance(r, ServerInventory)]
    rows = State(tuple(r for r in state.instances if r.instance_name == target))
    inputs = planner.restricted(population, names, fresh, rows, memory)
    scope = planner.Scope(names, population, WINDOW)
    return planner.plan(*inputs, policy, NOW, scope=scope, recent_deletions=recent)


def verdict(plan: Plan, target: str) -> tuple[object, ...]:
    return (
        sorted((a for a in plan.actions if a.instance_name == target), key=repr),
        sorted((d for d in plan.drift if d.instance_name == target), key=repr),
    )


def fleet(count: int) -> list[str]:
    return [name(i) for i in range(count)]


def test_every_kind_a_hint_may_decide_matches_the_full_pass() -> None:
    names = fleet(12)
    gone, down, back, slow, *rest = names
    state = desired(
        row(down, id=1), row(back, "disconnected", id=2), row(slow, id=3),
        *(row(n, id=10 + i) for i, n in enumerate(rest)))
    listed = server(
        "s1",
        inst(gone, number="5511900000001"),
        inst(down, LiveState.CLOSE, disconnect=TERMINAL),
        inst(back, number="5511900000002"),
        inst(slow, LiveState.CONNECTING, disconnect=TRANSIENT),
        *(inst(n, number=f"55119100000{i:02d}") for i, n in enumerate(rest)))
    memory = Memory(
        instances={("s1", slow): InstanceMemory("s1", slow, ago(3600),
                                                not_connected_since=ago(600))},
        tombstones={gone: Tombstone(gone, ORGS[0], ago(1))})
    full = run(state, [listed], memory)
    kinds = {a.instance_name: a.kind for a in full.actions}
    assert kinds == {gone: ActionKind.DELETE, down: ActionKind.MARK_DISCONNECTED,
                     back: ActionKind.MARK_CONNECTED, slow: ActionKind.MARK_DISCONNECTED}
    for target in names:
        assert verdict(targeted(target, state, [listed], memory), target) == verdict(full, target)


def test_the_restart_guard_counts_the_whole_server() -> None:
    names = fleet(10)
    state = desired(*(row(n, id=i + 1) for i, n in enumerate(names)))
    listed = server("s1", *(inst(n, LiveState.CONNECTING, disconnect=TRANSIENT) for n in names))
    memory = Memory(instances={("s1", n): InstanceMemory("s1", n, ago(3600),
                                                         not_connected_since=ago(600))
                               for n in names})
    full = run(state, [listed], memory)
    assert full.degraded_servers == {"s1"} and not full.actions
    for target in names:
        plan = targeted(target, state, [listed], memory)
        assert plan.degraded_servers == {"s1"}
        assert verdict(plan, target) == verdict(full, target)


def test_blast_radius_counts_deletions_of_the_window() -> None:
    names = fleet(8)
    orphan = names[0]
    state = desired(*(row(n, id=i + 1) for i, n in enumerate(names[1:])))
    listed = server("s1", *(inst(n) for n in names))
    memory = Memory(tombstones={orphan: Tombstone(orphan, ORGS[0], ago(1))})
    for recent in ({}, {"s1": 10}):
        full = run(state, [listed], memory) if not recent else planner.plan(
            state, [listed], memory, ENFORCE, NOW, recent_deletions=recent)
        plan = targeted(orphan, state, [listed], memory, recent=recent)
        assert verdict(plan, orphan) == verdict(full, orphan)
    assert [a.blocked_by for a in plan.actions if a.kind is ActionKind.DELETE] == [
        Guard.MAX_DELETIONS]


def test_a_hint_deletes_only_by_a_tombstone_and_a_fresh_listing() -> None:
    orphan, kept = fleet(2)
    state = desired(row(kept, id=1))
    listed = server("s1", inst(orphan), inst(kept))
    memory = Memory(instances={("s1", orphan): InstanceMemory(
        "s1", orphan, ago(3600), orphan_since=ago(600), orphan_streak=5)})
    assert [a.kind for a in run(state, [listed], memory).actions] == [ActionKind.DELETE]
    plan = targeted(orphan, state, [listed], memory)
    assert not plan.actions
    assert [d.kind for d in plan.drift] == [DriftKind.ORPHAN_PENDING]
    assert plan.memory.instances[("s1", orphan)].orphan_streak == 5
    stale = planner.population(state, [listed], memory, ENFORCE, NOW - 2 * WINDOW)
    tomb = replace(memory, tombstones={orphan: Tombstone(orphan, ORGS[0], ago(1))})
    inputs = planner.restricted(stale, frozenset({orphan}), [listed], State(()), tomb)
    late = planner.plan(*inputs, ENFORCE, NOW,
                        scope=planner.Scope(frozenset({orphan}), stale, WINDOW))
    assert not late.actions
