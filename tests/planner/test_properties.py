"""Properties of the planner over generated desired sets, inventories, clocks and memories.

Each property tries to make the daemon do harm; the oracles below are written from SPEC 4, not from
the planner's code.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import planner
from reconciler.model import (
    BLAST_RADIUS_GUARDS,
    Action,
    ActionKind,
    Delete,
    DeleteResult,
    DriftKind,
    Guard,
    LiveState,
    Memory,
    ObservedInstance,
    PassCounts,
    ServerInventory,
    ServerReadError,
)
from reconciler.names import BLANKS
from tests.planner.simulation import apply, taken
from tests.planner.strategies import Scenario, scenarios

THOROUGH = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
STATUS_KINDS = (ActionKind.MARK_DISCONNECTED, ActionKind.MARK_CONNECTED, ActionKind.MARK_MISSING)


def real_deletes(actions: tuple[Action, ...]) -> list[Action]:
    """Deletes that call Evolution: unblocked, not the confirmation of an earlier one."""
    return [
        a for a in actions
        if isinstance(a, Delete) and a.blocked_by is None and not a.already_gone
    ]


def listed(s: Scenario, server: str, name: str) -> ObservedInstance | None:
    for read in s.reads:
        if isinstance(read, ServerInventory) and read.server == server:
            return next((i for i in read.instances if i.name == name), None)
    return None


def managed_on(s: Scenario, server: str) -> int:
    for read in s.reads:
        if isinstance(read, ServerInventory) and read.server == server:
            return sum(1 for i in read.instances if s.policy.managed_pattern.fullmatch(i.name))
    return 0


def why_wrong(s: Scenario, action: Action) -> str | None:
    """Why SPEC 4.3 forbids this delete, or None when every rule the planner owns allows it."""
    policy, name = s.policy, action.instance_name
    if any(isinstance(r, ServerReadError) for r in s.reads):
        return "a read failed"
    inst = listed(s, action.server, name)
    if inst is None:
        return "not listed by that server"
    if any(row.instance_name.strip() == name for row in s.desired.instances):
        return "named by a desired row"
    if name in s.desired.claimed:
        return "claimed by a row that could not be read"
    if not policy.managed_pattern.fullmatch(name):
        return "unmanaged"
    if any(p.search(name) for p in policy.protected):
        return "protected"
    entry = s.memory.instances.get((action.server, name))
    if entry and entry.next_delete_at and entry.next_delete_at > s.now:
        return "backing off"
    if name in s.memory.tombstones:
        return None
    streak = (entry.orphan_streak if entry else 0) + 1
    if streak < policy.orphan_confirmations:
        return "unconfirmed"
    born = inst.created_at or (entry.first_seen if entry else s.now)
    if s.now - born < policy.orphan_grace:
        return "young"
    return None


@THOROUGH
@given(scenarios())
def test_never_deletes_what_it_must_not(s: Scenario) -> None:
    for action in real_deletes(s.plan().actions):
        assert why_wrong(s, action) is None, (why_wrong(s, action), action)


@THOROUGH
@given(scenarios())
def test_never_exceeds_the_blast_radius(s: Scenario) -> None:
    plan = s.plan()
    per_server = Counter(a.server for a in real_deletes(plan.actions))
    if s.policy.allow_mass_deletion:
        return
    for server, n in per_server.items():
        managed, wanted = managed_on(s, server), len(s.desired.instances)
        assert n <= s.policy.max_deletions
        assert n == 1 or n <= s.policy.max_deletion_fraction * managed
        assert wanted > 0
        last = s.memory.last_counts.get(server)
        if last is not None:
            assert wanted * 2 >= last.desired and managed * 2 >= last.observed, "a collapse"
    assert plan.blocked == any(a.blocked_by in BLAST_RADIUS_GUARDS for a in plan.actions)


@THOROUGH
@given(scenarios())
def test_one_deletion_is_never_held_back_by_the_fraction(s: Scenario) -> None:
    """SPEC 4.3 rule 6: the fraction blocks a server's deletions only when there are several."""
    held = Counter(a.server for a in s.plan().actions if a.blocked_by is Guard.MAX_FRACTION)
    for server, n in held.items():
        assert n > 1 and n > s.policy.max_deletion_fraction * managed_on(s, server)


@THOROUGH
@given(scenarios())
def test_a_claimed_instance_is_only_ever_audited_as_blocked(s: Scenario) -> None:
    for action in s.plan().actions:
        if isinstance(action, Delete) and action.instance_name in s.desired.claimed:
            assert action.already_gone or action.blocked_by in (
                Guard.INVALID_ROW, Guard.PROTECTED, Guard.INCOMPLETE_READ), action


@THOROUGH
@given(scenarios(), st.lists(st.tuples(st.text(BLANKS, max_size=2), st.text(BLANKS, max_size=2))))
def test_spelling_a_row_with_surrounding_blanks_deletes_nothing_more(
    s: Scenario, blanks: list[tuple[str, str]]
) -> None:
    """SPEC 3: one name rule; a row that keeps the spaces Evolution trimmed still owns it."""
    spelled = tuple(
        replace(r, instance_name=before + r.instance_name + after)
        for r, (before, after) in zip(s.desired.instances, blanks + [("", "")] * 8, strict=False)
    )
    respelled = replace(s, desired=replace(s.desired, instances=spelled))
    original = {(a.server, a.instance_name) for a in real_deletes(s.plan().actions)}
    assert {(a.server, a.instance_name) for a in real_deletes(respelled.plan().actions)} <= original


@THOROUGH
@given(scenarios(), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_input_order(s: Scenario, rnd: random.Random) -> None:
    plan = s.plan()
    assert plan == s.plan()
    rows, reads = list(s.desired.instances), list(s.reads)
    rnd.shuffle(rows)
    rnd.shuffle(reads)
    shuffled = replace(s, desired=replace(s.desired, instances=tuple(rows)), reads=tuple(reads))
    again = shuffled.plan()
    assert (again.actions, again.drift, again.memory) == (plan.actions, plan.drift, plan.memory)


@THOROUGH
@given(scenarios())
def test_converges_then_does_nothing(s: Scenario) -> None:
    """Level-triggered: at a fixed instant, applying each plan converges within the confirmations
    (plus one pass for the hysteresis and one for a collapse baseline), and once converged a pass
    proposes nothing new: only the same blocked actions."""
    for _ in range(s.policy.orphan_confirmations + 3):
        s = apply(s, s.plan())
    settled = s.plan()
    assert taken(settled, s.policy.mode) == []
    assert apply(s, settled).plan().actions == settled.actions


@THOROUGH
@given(scenarios())
def test_an_applied_action_is_never_planned_again(s: Scenario) -> None:
    first = s.plan()
    done = {(a.kind, a.server, a.instance_name, getattr(a, "row_id", None))
            for a in taken(first, s.policy.mode)}
    later = apply(s, first, now=s.now + s.policy.disconnect_after)
    for action in taken(later.plan(), s.policy.mode):
        assert (action.kind, action.server, action.instance_name,
                getattr(action, "row_id", None)) not in done


@THOROUGH
@given(scenarios())
def test_status_updates_respect_the_row_and_the_live_state(s: Scenario) -> None:
    rows = {r.id: r for r in s.desired.instances}
    plan = s.plan()
    for action in (a for a in plan.actions if a.kind in STATUS_KINDS):
        row = rows[action.row_id]  # type: ignore[index]
        assert row.enabled, "disabled rows are never touched"
        assert action.expected_status == row.status, "guarded by the value read"
        assert row.instance_name == action.instance_name
        if action.kind is ActionKind.MARK_MISSING:
            assert action.server == ""
            assert not any(isinstance(r, ServerReadError) for r in s.reads)
            assert all(listed(s, r.server, row.instance_name) is None for r in s.reads)
            continue
        inst = listed(s, action.server, action.instance_name)
        assert inst is not None
        if action.kind is ActionKind.MARK_CONNECTED:
            assert inst.live is LiveState.OPEN and inst.owner_jid
            assert row.status in ("pending", "disconnected")
        else:
            assert inst.live in (LiveState.CLOSE, LiveState.CONNECTING), "unknown is no verdict"
            assert row.status == "connected"
            copies = [listed(s, r.server, row.instance_name) for r in s.reads]
            assert not any(c and c.live is LiveState.OPEN for c in copies)
            if action.server in plan.degraded_servers:
                assert action.reason in ("logged_out", "device_removed", "temporarily_banned",
                                         "forbidden", "banned")


@THOROUGH
@given(scenarios())
def test_failed_servers_keep_their_memory_and_nothing_is_decided_from_them(s: Scenario) -> None:
    failed = {r.server for r in s.reads if isinstance(r, ServerReadError)}
    plan = s.plan()
    for key, entry in s.memory.instances.items():
        if key[0] in failed:
            assert plan.memory.instances.get(key) == entry
    for server in failed:
        assert plan.memory.last_counts.get(server) == s.memory.last_counts.get(server)
    assert not any(a.server in failed for a in plan.actions)
    assert not any(d.server in failed for d in plan.drift)
    if failed:
        assert all(a.blocked_by is not None or not isinstance(a, Delete) or a.already_gone
                   for a in plan.actions)


@THOROUGH
@given(scenarios())
def test_plans_are_well_formed(s: Scenario) -> None:
    plan = s.plan()
    assert len(set(plan.drift)) == len(plan.drift)
    assert len({(d.server, d.instance_name, d.kind) for d in plan.drift}) == len(plan.drift)
    order = [(a.server, a.instance_name, a.kind.value) for a in plan.actions]
    assert order == sorted(order)
    for action in plan.actions:
        about_rows = action.kind in STATUS_KINDS or action.reason == DriftKind.DUPLICATE_ROW
        confirmation = isinstance(action, Delete) and action.already_gone
        assert s.policy.managed_pattern.fullmatch(action.instance_name) or confirmation or (
            about_rows and any(r.instance_name == action.instance_name
                               for r in s.desired.instances)
        ), "an unmanaged instance is never acted on"
        if confirmation:
            assert action.blocked_by is None and listed(s, action.server,
                                                        action.instance_name) is None
    unmanaged = {d.instance_name for d in plan.drift if d.kind is DriftKind.UNMANAGED}
    assert not any(s.policy.managed_pattern.fullmatch(n) for n in unmanaged)
    assert not any(d.instance_name in unmanaged and d.kind is not DriftKind.UNMANAGED
                   and d.kind is not DriftKind.DUPLICATE_ROW and d.kind is not DriftKind.MISSING
                   for d in plan.drift)


@THOROUGH
@given(scenarios(), st.sampled_from(DeleteResult), st.integers(0, 2))
def test_delete_outcomes_back_off_and_are_forgotten_once_verified(
    s: Scenario, result: DeleteResult, repeats: int
) -> None:
    plan = s.plan()
    deletes = [a for a in plan.actions if a.kind is ActionKind.DELETE and a.blocked_by is None]
    memory: Memory = plan.memory
    for _ in range(repeats + 1):
        memory = planner.record_outcomes(memory, [(a, result) for a in deletes], s.now)
    for action in deletes:
        key = (action.server, action.instance_name)
        entry = memory.instances.get(key)
        if result is DeleteResult.VERIFIED:
            assert entry is None and action.instance_name not in memory.tombstones
            continue
        assert entry is not None and entry.next_delete_at is not None
        assert timedelta(seconds=30) <= entry.next_delete_at - s.now <= timedelta(hours=1)
        if result is DeleteResult.UNVERIFIED:
            assert entry.delete_requested_at is not None
            assert entry.delete_requested_at <= s.now
            assert entry.delete_reason == action.reason
    follow = replace(s, memory=memory).plan()
    assert not [a for a in real_deletes(follow.actions)
                if result is not DeleteResult.VERIFIED and a in deletes], "retried too soon"


def test_backoff_doubles_from_thirty_seconds_up_to_an_hour() -> None:
    assert [planner.delete_backoff(n).total_seconds() for n in range(1, 10)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert planner.delete_backoff(10_000) == timedelta(hours=1)


@THOROUGH
@given(scenarios(failures=False))
def test_a_complete_read_forgets_vanished_instances_and_counts_each_server(s: Scenario) -> None:
    plan = s.plan()
    for (server, name), entry in plan.memory.instances.items():
        if any(r.server == server for r in s.reads):
            assert listed(s, server, name) is not None or entry.delete_requested_at is not None
    for read in s.reads:
        current = PassCounts(len(s.desired.instances), managed_on(s, read.server))
        kept = s.memory.last_counts.get(read.server)
        assert plan.memory.last_counts[read.server] in (current, kept)
    guards = {a.blocked_by for a in plan.actions}
    assert Guard.INCOMPLETE_READ not in guards
