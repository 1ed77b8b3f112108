"""`orphan` and `orphan_pending`: confirmation, age, tombstones, retries, and the incident."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from uuid import UUID

from reconciler import planner
from reconciler.model import (
    ActionKind,
    DeleteResult,
    DriftKind,
    EventType,
    InstanceMemory,
    LiveState,
    Memory,
    ObservedInstance,
    Policy,
    ServerInventory,
    Tombstone,
)
from tests.planner.builders import (
    ENFORCE,
    deletes,
    desired,
    drift,
    drift_of,
    failed,
    inst,
    name,
    only,
    passes,
    row,
    rows,
    run,
    server,
    verified,
)
from tests.planner.strategies import NOW, ORGS, ago

EVENT_ID = UUID("0b9f6c1e-6a55-4a3e-9d4e-6f0d2a3b1c77")
KEPT = [name(n) for n in range(10, 14)]
"""Desired instances that keep a server big enough for one deletion under the 25 % fraction."""


def busy_server(*extra: ObservedInstance) -> ServerInventory:
    return server("s1", *(inst(n) for n in KEPT), *extra)


def test_an_orphan_is_pending_on_its_first_pass_and_deleted_on_the_second() -> None:
    orphan = name(1)
    reads = [busy_server(inst(orphan))]
    first = run(rows(*KEPT), reads)
    assert drift(first, DriftKind.ORPHAN_PENDING) == [("s1", orphan)]
    assert first.actions == ()
    entry = first.memory.instances[("s1", orphan)]
    assert (entry.first_seen, entry.orphan_since, entry.orphan_streak) == (NOW, NOW, 1)

    second = run(rows(*KEPT), reads, first.memory, now=NOW + timedelta(seconds=30))
    assert drift(second, DriftKind.ORPHAN) == [("s1", orphan)]
    delete = only(second.actions)
    assert (delete.kind, delete.server, delete.instance_name) == (ActionKind.DELETE, "s1", orphan)
    assert (delete.reason, delete.event, delete.blocked_by) == ("orphan", EventType.REMOVED, None)
    assert delete.organization_id == ORGS[0], "from the name's org group"
    assert delete.logout_first, "live: log out first to free the phone's device slot"
    assert second.memory.instances[("s1", orphan)].orphan_streak == 2


def test_one_confirmation_deletes_on_the_first_pass() -> None:
    plan = run(rows(*KEPT), [busy_server(inst(name(1)))],
               policy=replace(ENFORCE, orphan_confirmations=1))
    assert [a.instance_name for a in deletes(plan)] == [name(1)]


def test_a_young_orphan_waits_for_the_grace_period_by_created_at() -> None:
    young = inst(name(1), created=ago(100))
    plan = passes(5, rows(*KEPT), [busy_server(young)], every=timedelta(seconds=30))
    assert deletes(plan) == [], "100 s + 4 x 30 s = 220 s < 300 s"
    assert drift(plan, DriftKind.ORPHAN_PENDING) == [("s1", name(1))]
    later = run(rows(*KEPT), [busy_server(young)], plan.memory, now=ago(100 - 300))
    assert [a.instance_name for a in deletes(later)] == [name(1)]


def test_without_created_at_the_age_counts_from_first_seen() -> None:
    unknown_age = replace(inst(name(1)), created_at=None)
    reads = [busy_server(unknown_age)]
    first = run(rows(*KEPT), reads)
    assert first.memory.instances[("s1", name(1))].first_seen == NOW
    almost = run(rows(*KEPT), reads, first.memory, now=NOW + timedelta(seconds=299))
    assert deletes(almost) == []
    assert almost.memory.instances[("s1", name(1))].first_seen == NOW, "first seen is kept"
    due = run(rows(*KEPT), reads, almost.memory, now=NOW + timedelta(seconds=300))
    assert [a.instance_name for a in deletes(due)] == [name(1)]


def test_a_tombstone_replaces_confirmation_and_age() -> None:
    released = inst(name(1), created=ago(5))
    memory = Memory(tombstones={name(1): Tombstone(name(1), ORGS[1], ago(1))})
    plan = run(rows(*KEPT), [busy_server(released)], memory)
    delete = only(deletes(plan))
    assert (delete.instance_name, delete.blocked_by) == (name(1), None)
    assert delete.organization_id == ORGS[1], "the tombstone's organisation wins over the name's"
    assert name(1) in plan.memory.tombstones, "kept until the instance is gone"


def test_a_tombstone_is_processed_once_gone_everywhere_or_desired_again() -> None:
    memory = Memory(tombstones={
        name(1): Tombstone(name(1), ORGS[0], ago(1)),
        name(2): Tombstone(name(2), ORGS[0], ago(1)),
        name(3): Tombstone(name(3), ORGS[0], ago(1)),
    })
    reads = [busy_server(inst(name(3)))]
    plan = run(rows(*KEPT, name(2)), reads, memory)
    assert set(plan.memory.tombstones) == {name(3)}
    partial = run(rows(*KEPT, name(2)), [*reads, failed("s2")], memory)
    assert set(partial.memory.tombstones) == {name(1), name(3)}, "s2 might still list name(1)"


def test_logout_first_only_when_the_instance_may_be_live() -> None:
    cases = {
        name(1): (inst(name(1), LiveState.CLOSE), False),
        name(2): (inst(name(2), LiveState.UNKNOWN, stored="close"), False),
        name(3): (inst(name(3), LiveState.UNKNOWN, stored="open"), True),
        name(4): (inst(name(4), LiveState.CONNECTING), True),
    }
    kept = [name(n) for n in range(10, 22)]
    reads = [server("s1", *(inst(n) for n in kept), *(i for i, _ in cases.values()))]
    plan = passes(2, rows(*kept), reads)
    assert {a.instance_name: a.logout_first for a in deletes(plan)} == {
        n: expected for n, (_, expected) in cases.items()
    }


def test_the_incident_orphan_on_the_number_of_a_new_instance_is_deleted_as_a_duplicate() -> None:
    """The root cause: clinic A re-paired its number into a new instance B; the old instance A was
    never deleted, so two linked sessions served one number until WhatsApp removed a device."""
    number = "5511999990001"
    a = name(1)
    b = name(2)
    healthy, dropped, young = name(3), name(4), name(5)
    reads = [server(
        "s1",
        inst(a, number=number, created=ago(86_400)),
        inst(b, number=number, created=ago(600)),
        inst(healthy, number="5511999990002"),
        inst(dropped, LiveState.CLOSE),
        inst(young, LiveState.CONNECTING, created=ago(20)),
        inst("support-bot"),
    )]
    state = desired(
        row(b, "pending", id=2), row(healthy, id=3), row(dropped, "disconnected", id=4),
        row(young, "pending", id=5),
    )
    first = run(state, reads)
    assert drift(first, DriftKind.ORPHAN_PENDING) == [("s1", a)]
    assert set(drift(first, DriftKind.DUPLICATE_NUMBER)) == {("s1", a), ("s1", b)}
    assert not [x for x in first.actions if x.kind is ActionKind.FLAG], "only one is desired"
    assert [x.kind for x in first.actions] == [ActionKind.MARK_CONNECTED], "B is live and paired"

    second = run(state, reads, first.memory, now=NOW + timedelta(seconds=30))
    delete = only(deletes(second))
    assert (delete.instance_name, delete.reason, delete.blocked_by) == (a, "duplicate_number", None)
    assert delete.logout_first
    assert not [x for x in second.actions if x.instance_name != a and x.kind is ActionKind.DELETE]
    assert drift_of(second, "support-bot") == {DriftKind.UNMANAGED}


def test_on_a_tiny_server_the_incident_is_fixed_under_the_default_fraction() -> None:
    """A server listing only A and B: one deletion is always within the 25 % (SPEC 4.3 rule 6),
    otherwise the incident itself would never converge without an operator."""
    number = "5511999990001"
    reads = [server("s1", inst(name(1), number=number), inst(name(2), number=number))]
    plan = passes(2, rows(name(2)), reads)
    delete = only(deletes(plan))
    assert (delete.instance_name, delete.reason, delete.blocked_by) == (
        name(1), "duplicate_number", None)
    assert not plan.blocked


def test_an_orphan_that_is_not_live_on_a_desired_number_is_a_plain_orphan() -> None:
    number = "5511999990001"
    stale = inst(name(1), LiveState.CLOSE, number=number)
    reads = [busy_server(stale, inst(name(2), number=number))]
    plan = passes(2, rows(*KEPT, name(2)), reads)
    assert only(deletes(plan)).reason == "orphan", "closed rows keep a stale owner (F2)"


def test_a_disabled_row_still_owns_its_instance() -> None:
    state = desired(*rows(*KEPT).instances, row(name(1), enabled=False, id=9))
    plan = passes(3, state, [busy_server(inst(name(1)))])
    assert deletes(plan) == []
    assert drift_of(plan, name(1)) == set()


def test_failed_and_unverified_deletes_back_off_and_retry() -> None:
    reads = [busy_server(inst(name(1)))]
    plan = passes(2, rows(*KEPT), reads)
    delete = replace(only(deletes(plan)), event_id=EVENT_ID)
    memory = planner.record_outcomes(plan.memory, [(delete, DeleteResult.FAILED)], NOW)
    entry = memory.instances[("s1", name(1))]
    assert (entry.delete_attempts, entry.next_delete_at) == (1, NOW + timedelta(seconds=30))
    assert (entry.delete_requested_at, entry.delete_event_id) == (NOW, EVENT_ID), (
        "a failed call may still have deleted it: the removal stays owed, under its one id")

    waiting = run(rows(*KEPT), reads, memory, now=NOW + timedelta(seconds=29))
    assert deletes(waiting) == []
    assert drift(waiting, DriftKind.ORPHAN) == [("s1", name(1))], "still drifting while waiting"
    retry = run(rows(*KEPT), reads, waiting.memory, now=NOW + timedelta(seconds=30))
    again = only(deletes(retry))
    assert again.event_id == EVENT_ID, "a retry is the same decision"
    memory = planner.record_outcomes(retry.memory, [(again, DeleteResult.UNVERIFIED)],
                                     NOW + timedelta(seconds=30))
    entry = memory.instances[("s1", name(1))]
    assert entry.delete_attempts == 2
    assert entry.next_delete_at == NOW + timedelta(seconds=90)
    assert (entry.delete_requested_at, entry.delete_reason) == (NOW, "orphan")


def test_an_unverified_delete_is_confirmed_once_the_server_stops_listing_it() -> None:
    number = "5511999990001"
    reads = [busy_server(inst(name(1), number=number), inst(name(2), number=number))]
    kept = rows(*KEPT, name(2))
    plan = passes(2, kept, reads)
    delete = only(deletes(plan))
    assert delete.reason == "duplicate_number"
    memory = planner.record_outcomes(plan.memory, [(delete, DeleteResult.UNVERIFIED)], NOW)

    gone = [busy_server(inst(name(2), number=number)), failed("s2")]
    confirm = run(kept, gone, memory, now=NOW + timedelta(seconds=5))
    action = only(deletes(confirm))
    assert action.already_gone and action.blocked_by is None, "a failed read elsewhere is moot"
    assert (action.reason, action.event, action.logout_first) == ("duplicate_number",
                                                                  EventType.REMOVED, False)
    assert ("s1", name(1)) in confirm.memory.instances, "kept until the event is out"
    assert drift_of(confirm, name(1)) == set()

    done = verified(confirm)
    assert ("s1", name(1)) not in done.instances
    assert run(kept, gone, done, now=NOW + timedelta(seconds=10)).actions == ()


def test_a_delete_in_flight_is_forgotten_when_a_row_names_the_instance_again() -> None:
    memory = Memory(instances={("s1", name(1)): InstanceMemory(
        "s1", name(1), first_seen=ago(900), orphan_since=ago(900), orphan_streak=9,
        delete_requested_at=ago(60), delete_reason="orphan", delete_attempts=1,
        next_delete_at=ago(30),
    )})
    plan = run(rows(*KEPT, name(1)), [busy_server(inst(name(1)))], memory)
    assert plan.actions == ()
    entry = plan.memory.instances[("s1", name(1))]
    assert (entry.orphan_streak, entry.orphan_since, entry.delete_requested_at) == (0, None, None)
    assert entry.first_seen == ago(900)


def test_memory_follows_complete_reads_and_leaves_failed_servers_alone() -> None:
    old = InstanceMemory("s1", name(1), first_seen=ago(900), orphan_streak=1, orphan_since=ago(60))
    other = InstanceMemory("s2", name(2), first_seen=ago(900), orphan_streak=1,
                           orphan_since=ago(60))
    memory = Memory(instances={("s1", name(1)): old, ("s2", name(2)): other})
    plan = run(rows(*KEPT), [busy_server(), failed("s2")], memory)
    assert ("s1", name(1)) not in plan.memory.instances, "gone from a complete read: forgotten"
    assert plan.memory.instances[("s2", name(2))] == other
    assert set(plan.memory.instances) == {("s1", n) for n in KEPT} | {("s2", name(2))}


def test_an_orphan_streak_restarts_when_the_instance_is_desired_in_between() -> None:
    reads = [busy_server(inst(name(1)))]
    first = run(rows(*KEPT), reads)
    owned = run(rows(*KEPT, name(1)), reads, first.memory, now=NOW + timedelta(seconds=30))
    again = run(rows(*KEPT), reads, owned.memory, now=NOW + timedelta(seconds=60))
    assert deletes(again) == []
    assert again.memory.instances[("s1", name(1))].orphan_streak == 1


def test_organization_id_is_none_without_an_org_group() -> None:
    policy = replace(ENFORCE, managed_pattern=re.compile(r"^bot-[0-9]+$"), orphan_confirmations=1)
    reads = [server("s1", *(inst(f"bot-{n}") for n in range(5)))]
    plan = run(desired(*(row(f"bot-{n}", id=n + 1) for n in range(1, 5))), reads, policy=policy)
    assert only(deletes(plan)).organization_id is None
    assert planner.plan(desired(), [], Memory(), Policy(), NOW).actions == ()


def test_a_name_whose_org_group_is_not_a_uuid_has_no_organization() -> None:
    weird = "clinic-" + "-" * 36 + "-1"
    assert re.fullmatch(Policy().managed_pattern, weird)
    plan = passes(2, rows(*KEPT), [busy_server(inst(weird))])
    assert only(deletes(plan)).organization_id is None
    assert isinstance(only(deletes(passes(2, rows(*KEPT), [busy_server(inst(name(1)))])))
                      .organization_id, UUID)


def test_a_name_longer_than_evolution_allows_is_never_managed() -> None:
    absurd = "clinic-00000000-0000-4000-8000-000000000000-" + "1" * 250
    assert re.fullmatch(Policy().managed_pattern, absurd)
    reads = [busy_server(inst(absurd))]
    first = run(rows(*KEPT), reads)
    second = run(rows(*KEPT), reads, first.memory, now=NOW + timedelta(hours=1))
    assert drift_of(second, absurd) == {DriftKind.UNMANAGED}
    assert deletes(second) == []


def test_names_differing_only_by_surrounding_spaces_are_one_instance() -> None:
    """Evolution 2.4 trims names at create; a row keeping the space still owns the instance."""
    policy = replace(ENFORCE, managed_pattern=re.compile(r"^tenant-.*$"), orphan_confirmations=1,
                     orphan_grace=timedelta(0))
    kept = [f"tenant-{n}" for n in range(4)]
    reads = [server("s1", inst("tenant-trimmed"), *(inst(n) for n in kept))]
    state = rows("tenant-trimmed ", *kept)
    plan = passes(3, state, reads, policy=policy)
    assert deletes(plan) == []
    assert plan.actions == ()
    assert drift_of(plan, "tenant-trimmed") == set()
    assert drift_of(plan, "tenant-trimmed ") == set()


def test_a_recreated_instance_starts_its_age_and_confirmations_again() -> None:
    """SPEC 3: deleted and created again under its name between passes (a new `instanceId`),
    an orphan is a new instance: it does not inherit its predecessor's first-seen time."""
    def v1_item(instance_id: str) -> ObservedInstance:
        return replace(inst(name(1)), created_at=None, instance_id=instance_id)

    policy = replace(ENFORCE, orphan_grace=timedelta(seconds=8), orphan_confirmations=2)
    first = run(rows(*KEPT), [busy_server(v1_item("a"))], policy=policy)
    later = NOW + timedelta(seconds=10)
    plan = run(rows(*KEPT), [busy_server(v1_item("b"))], first.memory, now=later, policy=policy)
    assert deletes(plan) == [], "2 s old and seen once: not an orphan to delete yet"
    entry = plan.memory.instances[("s1", name(1))]
    assert (entry.first_seen, entry.orphan_streak, entry.instance_id) == (later, 1, "b")
    same = run(rows(*KEPT), [busy_server(v1_item("a"))], first.memory, now=later, policy=policy)
    assert only(deletes(same)).instance_name == name(1), "the same id keeps its history"


def test_a_pending_removal_is_confirmed_when_its_name_now_holds_a_new_instance() -> None:
    reads = [busy_server(replace(inst(name(1)), instance_id="a"))]
    plan = passes(2, rows(*KEPT), reads)
    delete = replace(only(deletes(plan)), event_id=EVENT_ID)
    memory = planner.record_outcomes(plan.memory, [(delete, DeleteResult.UNVERIFIED)], NOW)
    recreated = [busy_server(replace(inst(name(1), created=NOW), instance_id="b"))]
    after = run(rows(*KEPT), recreated, memory, now=NOW + timedelta(seconds=5))
    confirmation = only([a for a in deletes(after) if a.already_gone])
    assert (confirmation.instance_name, confirmation.event_id) == (name(1), EVENT_ID)
    assert not [a for a in deletes(after) if not a.already_gone], "the new one is young"


def test_every_blank_some_line_trims_at_create_is_forgiven() -> None:
    """JavaScript's trim (Evolution 2.4) also removes U+FEFF, which Python's str.strip keeps."""
    policy = replace(ENFORCE, orphan_confirmations=1, orphan_grace=timedelta(0))
    trimmed = name(1)
    reads = [server("s1", inst(trimmed), *(inst(n) for n in KEPT))]
    for spelling in (f"\ufeff{trimmed}", f"{trimmed}\u00a0", f"\u3000{trimmed}\n"):
        plan = passes(2, rows(spelling, *KEPT), reads, policy=policy)
        assert deletes(plan) == [], repr(spelling)
        assert drift_of(plan, trimmed) == set(), repr(spelling)
