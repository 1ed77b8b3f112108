"""The deletion guards of SPEC 4.3, in order: protected, incomplete read, blast radius."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

from reconciler.model import (
    ActionKind,
    DriftKind,
    Guard,
    InstanceMemory,
    Memory,
    PassCounts,
    Plan,
    Policy,
    Tombstone,
)
from reconciler.names import instance_key
from tests.planner.builders import (
    ENFORCE,
    deletes,
    desired,
    drift,
    failed,
    inst,
    name,
    of_kind,
    only,
    passes,
    rows,
    run,
    server,
)
from tests.planner.strategies import NOW, ORGS, ago

MASS = replace(ENFORCE, allow_mass_deletion=True)
KEPT = [name(n) for n in range(10, 30)]


def released(*names: str) -> Memory:
    """Tombstones: the orphans are candidates on their first pass."""
    return Memory(tombstones={n: Tombstone(n, ORGS[0], ago(1)) for n in names})


def guards_of(plan: Plan) -> dict[str, Guard | None]:
    return {a.instance_name: a.blocked_by for a in deletes(plan)}


def test_a_protected_orphan_is_reported_and_blocked_never_deleted() -> None:
    policy = replace(MASS, protected=(re.compile(f"^{re.escape(name(1))}$"),))
    reads = [server("s1", *(inst(n) for n in KEPT), inst(name(1)), inst(name(2)))]
    plan = passes(2, rows(*KEPT), reads, released(name(1)), policy=policy)
    assert guards_of(plan) == {name(1): Guard.PROTECTED, name(2): None}
    assert not plan.blocked, "protected is not a blast-radius guard: exit 0"
    assert drift(plan, DriftKind.ORPHAN) == [("s1", name(1)), ("s1", name(2))]


def test_protected_entries_are_searched_so_an_anchored_prefix_protects_a_family() -> None:
    policy = replace(ENFORCE, protected=(re.compile(f"^clinic-{ORGS[1]}-"),))
    kept = [name(n, ORGS[1]) for n in range(10, 20)]
    reads = [server("s1", *(inst(n) for n in kept), inst(name(1, ORGS[1])))]
    plan = passes(2, rows(*kept), reads, policy=policy)
    assert only(deletes(plan)).blocked_by is Guard.PROTECTED


def test_an_unconfirmed_protected_orphan_is_only_pending() -> None:
    policy = replace(ENFORCE, protected=(re.compile(re.escape(name(1))),))
    plan = run(rows(*KEPT), [server("s1", *(inst(n) for n in KEPT), inst(name(1)))],
               policy=policy)
    assert plan.actions == ()
    assert drift(plan, DriftKind.ORPHAN_PENDING) == [("s1", name(1))]


def test_one_failed_read_blocks_every_delete_but_streaks_still_advance() -> None:
    reads = [server("s1", *(inst(n) for n in KEPT), inst(name(1))), failed("s2")]
    first = run(rows(*KEPT), reads, policy=MASS)
    assert first.memory.instances[("s1", name(1))].orphan_streak == 1
    second = run(rows(*KEPT), reads, first.memory, policy=MASS, now=NOW + timedelta(seconds=30))
    assert guards_of(second) == {name(1): Guard.INCOMPLETE_READ}, "not lifted by the override"
    assert not second.blocked
    recovered = [reads[0], server("s2")]
    third = run(rows(*KEPT), recovered, second.memory, now=NOW + timedelta(seconds=60))
    assert guards_of(third) == {name(1): None}, "confirmed by the passes that did read s1"


def test_an_empty_desired_set_blocks_every_delete() -> None:
    orphans = [name(n) for n in range(1, 4)]
    reads = [server("s1", *(inst(n) for n in orphans))]
    plan = run(desired(), reads, released(*orphans))
    assert set(guards_of(plan).values()) == {Guard.EMPTY_DESIRED}
    assert plan.blocked
    assert set(guards_of(run(desired(), reads, released(*orphans), policy=MASS)).values()) == {
        None}


def test_a_desired_set_that_lost_more_than_half_collapses() -> None:
    reads = [server("s1", *(inst(n) for n in KEPT), inst(name(1)))]
    state = rows(*KEPT[:9])
    at_half = Memory(last_counts={"s1": PassCounts(desired=18, observed=21)},
                     tombstones=released(name(1)).tombstones)
    assert guards_of(run(state, reads, at_half, policy=replace(ENFORCE, max_deletions=99,
                                                              max_deletion_fraction=1.0))) == {
        name(1): None}, "exactly half is not more than half"
    beyond = replace(at_half, last_counts={"s1": PassCounts(desired=19, observed=21)})
    plan = run(state, reads, beyond)
    assert set(guards_of(plan).values()) == {Guard.COLLAPSE}
    assert plan.blocked


def test_a_server_that_lists_less_than_half_of_before_collapses() -> None:
    reads = [server("s1", *(inst(n) for n in KEPT[:4]), inst(name(1)))]
    memory = replace(released(name(1)), last_counts={"s1": PassCounts(desired=4, observed=11)})
    assert guards_of(run(rows(*KEPT[:4]), reads, memory)) == {name(1): Guard.COLLAPSE}
    memory = replace(memory, last_counts={"s1": PassCounts(desired=4, observed=10)})
    assert guards_of(run(rows(*KEPT[:4]), reads, memory)) == {name(1): None}


def test_a_collapse_holds_until_the_operator_accepts_it() -> None:
    """The baseline only moves when nothing is at stake, so a truncated desired set cannot wait
    out the guard while its orphans collect their two confirmations."""
    everything = [name(n) for n in range(1, 21)]
    reads = [server("s1", *(inst(n) for n in everything))]
    before = run(rows(*everything), reads)
    assert before.memory.last_counts["s1"] == PassCounts(20, 20)

    truncated = rows(*everything[:4])
    plan = before
    for i in range(1, 4):
        plan = run(truncated, reads, plan.memory, now=NOW + i * timedelta(seconds=30))
    assert set(guards_of(plan).values()) == {Guard.COLLAPSE}
    assert plan.memory.last_counts["s1"] == PassCounts(20, 20), "the baseline is held"

    accepted = run(truncated, reads, plan.memory, policy=MASS, now=NOW + timedelta(seconds=120))
    assert set(guards_of(accepted).values()) == {None}
    assert accepted.memory.last_counts["s1"] == PassCounts(4, 20)


def test_a_harmless_collapse_moves_the_baseline() -> None:
    """The application deleted half of its rows and their instances: nothing left to protect."""
    reads = [server("s1", *(inst(n) for n in KEPT[:4]))]
    memory = Memory(last_counts={"s1": PassCounts(20, 20)})
    plan = run(rows(*KEPT[:4]), reads, memory)
    assert plan.actions == ()
    assert plan.memory.last_counts["s1"] == PassCounts(4, 4)


def test_more_candidates_than_max_deletions_blocks_them_all() -> None:
    orphans = [name(n) for n in range(1, 4)]
    reads = [server("s1", *(inst(n) for n in KEPT), *(inst(n) for n in orphans))]
    policy = replace(ENFORCE, max_deletions=2, max_deletion_fraction=1.0)
    plan = run(rows(*KEPT), reads, released(*orphans), policy=policy)
    assert guards_of(plan) == dict.fromkeys(orphans, Guard.MAX_DELETIONS)
    assert plan.blocked
    two = run(rows(*KEPT), reads, released(*orphans[:2]), policy=policy)
    assert set(guards_of(two).values()) == {None}


def test_more_than_the_fraction_of_a_server_blocks_them_all() -> None:
    kept = KEPT[:3]
    orphans = [name(1), name(2)]
    reads = [server("s1", *(inst(n) for n in kept), *(inst(n) for n in orphans))]
    plan = run(rows(*kept), reads, released(*orphans))
    assert guards_of(plan) == dict.fromkeys(orphans, Guard.MAX_FRACTION), "2 > 25 % of 5"
    one = run(rows(*kept), reads, released(name(1)), policy=replace(
        ENFORCE, max_deletion_fraction=0.2))
    assert guards_of(one) == {name(1): None}, "1 <= 20 % of 5"


def test_blast_radius_guards_apply_in_order() -> None:
    orphans = [name(n) for n in range(1, 12)]
    reads = [server("s1", *(inst(n) for n in orphans))]
    memory = replace(released(*orphans), last_counts={"s1": PassCounts(9, 30)})
    assert set(guards_of(run(desired(), reads, memory)).values()) == {Guard.EMPTY_DESIRED}
    assert set(guards_of(run(rows(name(99)), reads, memory)).values()) == {Guard.COLLAPSE}
    assert set(guards_of(run(rows(name(99)), reads, released(*orphans))).values()) == {
        Guard.MAX_DELETIONS}


def test_blast_radius_is_judged_per_server() -> None:
    orphans = [name(n) for n in range(1, 4)]
    reads = [
        server("s1", *(inst(n) for n in KEPT), inst(orphans[0])),
        server("s2", *(inst(n) for n in orphans[1:])),
    ]
    plan = run(rows(*KEPT), reads, released(*orphans))
    assert {(a.server, a.blocked_by) for a in deletes(plan)} == {
        ("s1", None), ("s2", Guard.MAX_FRACTION)}


def test_already_gone_confirmations_are_never_blocked_nor_counted() -> None:
    gone = {("s1", name(n)): InstanceMemory("s1", name(n), first_seen=ago(900),
                                            delete_requested_at=ago(30), delete_reason="orphan",
                                            delete_attempts=1, next_delete_at=ago(-30))
            for n in range(1, 4)}
    reads = [server("s1", *(inst(n) for n in KEPT[:4]), inst(name(5)))]
    memory = Memory(instances=gone, tombstones=released(name(5)).tombstones)
    plan = run(desired(), reads, memory, policy=replace(ENFORCE, max_deletions=1))
    confirmations = [a for a in deletes(plan) if a.already_gone]
    assert len(confirmations) == 3
    assert all(a.blocked_by is None for a in confirmations)
    assert guards_of(plan)[name(5)] is Guard.EMPTY_DESIRED


def test_mark_missing_waits_while_the_desired_set_or_a_server_collapses() -> None:
    reads = [server("s1", *(inst(n) for n in KEPT[:3]))]
    state = rows(*KEPT[:3], name(1))
    memory = Memory(missing_streaks={name(1): 5}, last_counts={"s1": PassCounts(4, 9)})
    plan = run(state, reads, memory)
    mark = only(of_kind(plan, ActionKind.MARK_MISSING))
    assert mark.blocked_by is Guard.COLLAPSE
    assert plan.blocked
    assert plan.memory.last_counts["s1"] == PassCounts(4, 9), "held while a row looks missing"
    lifted = run(state, reads, memory, policy=MASS)
    assert only(of_kind(lifted, ActionKind.MARK_MISSING)).blocked_by is None


def test_mark_missing_waits_when_the_desired_count_collapsed_on_any_server() -> None:
    reads = [server("s1", *(inst(n) for n in KEPT[:3]))]
    state = rows(*KEPT[:3], name(1))
    memory = Memory(missing_streaks={name(1): 5},
                    last_counts={"s1": PassCounts(4, 3), "elsewhere": PassCounts(9, 0)})
    plan = run(state, reads, memory)
    assert only(of_kind(plan, ActionKind.MARK_MISSING)).blocked_by is Guard.COLLAPSE


def test_default_policy_is_the_spec_defaults() -> None:
    policy = Policy()
    assert (policy.orphan_confirmations, policy.orphan_grace, policy.max_deletions,
            policy.max_deletion_fraction) == (2, timedelta(seconds=300), 10, 0.25)


def test_one_deletion_per_server_is_always_within_the_fraction() -> None:
    """The incident's own shape: the orphan and the clinic's new instance. 1 > 25 % of 2, yet
    holding it back would keep the two sessions fighting for ever (SPEC 4.3 rule 6)."""
    reads = [server("s1", inst(name(1)), inst(name(2)))]
    plan = run(rows(name(2)), reads, released(name(1)))
    assert guards_of(plan) == {name(1): None}
    assert not plan.blocked
    alone = run(rows(name(2)), [server("s1", inst(name(1)))], released(name(1)),
                policy=replace(ENFORCE, max_deletion_fraction=0.01))
    assert guards_of(alone) == {name(1): None}, "a server listing only the orphan"


def test_two_deletions_on_a_small_server_are_still_beyond_the_fraction() -> None:
    reads = [server("s1", inst(name(1)), inst(name(2)), inst(name(3)))]
    plan = run(rows(name(3)), reads, released(name(1), name(2)))
    assert guards_of(plan) == dict.fromkeys([name(1), name(2)], Guard.MAX_FRACTION)
    assert plan.blocked


def test_the_single_deletion_still_answers_to_the_other_blast_radius_guards() -> None:
    reads = [server("s1", inst(name(1)), inst(name(2)))]
    none_allowed = run(rows(name(2)), reads, released(name(1)),
                       policy=replace(ENFORCE, max_deletions=0))
    assert guards_of(none_allowed) == {name(1): Guard.MAX_DELETIONS}
    assert guards_of(run(desired(), reads, released(name(1)))) == {name(1): Guard.EMPTY_DESIRED}
    shrunk = replace(released(name(1)), last_counts={"s1": PassCounts(desired=3, observed=2)})
    assert guards_of(run(rows(name(2)), reads, shrunk)) == {name(1): Guard.COLLAPSE}


def test_an_instance_claimed_by_an_unreadable_row_is_never_deleted() -> None:
    """SPEC 4.3 rule 5: a row whose instance_name is a list, an object or double-encoded may be
    the instance's owner; it is claimed, not orphaned, whatever the override or a tombstone say."""
    claimed, orphan = name(1), name(2)
    reads = [server("s1", *(inst(n) for n in KEPT), inst(claimed), inst(orphan))]
    state = replace(rows(*KEPT), claimed=frozenset({claimed}))
    plan = passes(2, state, reads)
    assert guards_of(plan) == {claimed: Guard.INVALID_ROW, orphan: None}
    assert not plan.blocked, "invalid_row is no blast-radius guard: nothing to override"
    for policy in (ENFORCE, MASS):
        released_too = run(state, reads, released(claimed, orphan), policy=policy)
        assert guards_of(released_too) == {claimed: Guard.INVALID_ROW, orphan: None}


def test_a_claim_uses_the_one_name_rule() -> None:
    claimed = name(1)
    reads = [server("s1", *(inst(n) for n in KEPT), inst(claimed))]
    state = replace(rows(*KEPT), claimed=frozenset({instance_key(f"\u00a0{claimed}\t")}))
    assert guards_of(run(state, reads, released(claimed))) == {claimed: Guard.INVALID_ROW}


def test_a_claimed_instance_does_not_count_against_the_blast_radius() -> None:
    reads = [server("s1", inst(name(1)), inst(name(2)), inst(name(3)))]
    state = replace(rows(name(3)), claimed=frozenset({name(1)}))
    plan = run(state, reads, released(name(1), name(2)))
    assert guards_of(plan) == {name(1): Guard.INVALID_ROW, name(2): None}
