"""`duplicate_number`, `duplicate_name`, `duplicate_row`: flagged and published once per group."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from uuid import UUID

from reconciler.model import (
    ActionKind,
    DriftKind,
    EventType,
    LiveState,
    Memory,
    Mode,
    ServerInventory,
)
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
    row,
    rows,
    run,
    server,
)
from tests.planner.strategies import NOW, ORGS

NUMBER = "5511999990001"
DRY_RUN = replace(ENFORCE, mode=Mode.DRY_RUN)


def two_desired_on_one_number() -> list[ServerInventory]:
    return [server("s1", inst(name(1), number=NUMBER)),
            server("s2", inst(name(2, ORGS[1]), number=NUMBER))]


def test_two_desired_instances_live_on_one_number_are_flagged_once() -> None:
    reads = two_desired_on_one_number()
    state = desired(row(name(1), id=1), row(name(2, ORGS[1]), id=2, org=ORGS[1]))
    first = run(state, reads)
    assert set(drift(first, DriftKind.DUPLICATE_NUMBER)) == {("s1", name(1)),
                                                              ("s2", name(2, ORGS[1]))}
    flag = only(first.actions)
    assert (flag.kind, flag.reason, flag.event) == (ActionKind.FLAG, "duplicate_number",
                                                    EventType.DUPLICATE)
    assert (flag.server, flag.instance_name) == ("s1", name(1)), "the first member by name"
    assert first.memory.reported_duplicates == {f"duplicate_number:{NUMBER}"}

    second = run(state, reads, first.memory, now=NOW + timedelta(seconds=30))
    assert second.actions == ()
    assert drift(second, DriftKind.DUPLICATE_NUMBER), "still reported as drift"
    assert not deletes(second), "desired instances are never deleted"


def test_a_cleared_group_is_published_again_when_it_reappears() -> None:
    reads = two_desired_on_one_number()
    state = rows(name(1), name(2, ORGS[1]))
    first = run(state, reads)
    one_closed = [reads[0], server("s2", inst(name(2, ORGS[1]), LiveState.CLOSE, number=NUMBER))]
    cleared = run(state, one_closed, first.memory)
    assert cleared.memory.reported_duplicates == frozenset()
    assert not drift(cleared, DriftKind.DUPLICATE_NUMBER), "a closed row keeps a stale owner"
    again = run(state, reads, cleared.memory)
    assert only(again.actions).kind is ActionKind.FLAG


def test_a_failed_read_does_not_clear_a_reported_group() -> None:
    state = rows(name(1), name(2, ORGS[1]))
    memory = Memory(reported_duplicates=frozenset({f"duplicate_number:{NUMBER}",
                                                   f"duplicate_name:{name(3)}"}))
    plan = run(state, [server("s1", inst(name(1), number=NUMBER)), failed("s2")], memory)
    assert plan.memory.reported_duplicates == memory.reported_duplicates


def test_a_dry_run_flags_every_pass_and_remembers_nothing() -> None:
    reads = two_desired_on_one_number()
    state = rows(name(1), name(2, ORGS[1]))
    plan = passes(3, state, reads, policy=DRY_RUN)
    assert only(plan.actions).kind is ActionKind.FLAG
    assert plan.memory.reported_duplicates == frozenset()


def test_the_same_name_on_two_servers_is_flagged_and_an_orphan_copy_deleted_per_server() -> None:
    kept = [name(n) for n in range(10, 14)]
    reads = [server("s1", *(inst(n) for n in kept), inst(name(1))),
             server("s2", inst(kept[0]), inst(name(1)),
                    inst(name(20)), inst(name(21)), inst(name(22)))]
    state = rows(*kept, name(20), name(21), name(22))
    plan = passes(2, state, reads)
    assert set(drift(plan, DriftKind.DUPLICATE_NAME)) == {("s1", name(1)), ("s1", kept[0]),
                                                           ("s2", name(1)), ("s2", kept[0])}
    assert of_kind(plan, ActionKind.FLAG) == [], "flagged by the first pass"
    flags = of_kind(run(state, reads), ActionKind.FLAG)
    assert {(f.server, f.instance_name, f.reason) for f in flags} == {
        ("s1", name(1), "duplicate_name"), ("s1", kept[0], "duplicate_name")}
    assert {(a.server, a.instance_name, a.blocked_by) for a in deletes(plan)} == {
        ("s1", name(1), None), ("s2", name(1), None)}


def test_two_rows_naming_one_instance_are_flagged_and_each_handled() -> None:
    reads = [server("s1", inst(name(1), LiveState.CLOSE, disconnect=None, stored="close"))]
    state = desired(row(name(1), id=1), row(name(1), id=2), row(name(2), "pending", id=3),
                    row(name(2), "pending", id=4, org=None))
    first = run(state, reads)
    assert set(drift(first, DriftKind.DUPLICATE_ROW)) == {("s1", name(1)), ("", name(2))}
    flags = of_kind(first, ActionKind.FLAG)
    assert {(f.server, f.instance_name) for f in flags} == {("s1", name(1)), ("", name(2))}
    assert {f.organization_id for f in flags} == {ORGS[0]}

    plan = run(state, reads, first.memory, now=NOW + timedelta(seconds=120))
    assert of_kind(plan, ActionKind.FLAG) == []
    marks = of_kind(plan, ActionKind.MARK_DISCONNECTED)
    assert sorted(str(m.row_id) for m in marks) == [str(UUID(int=1)), str(UUID(int=2))]
    assert drift(plan, DriftKind.DISCONNECTED) == [("s1", name(1))], "one drift per instance"
    missing = of_kind(plan, ActionKind.MARK_MISSING)
    assert sorted(str(m.row_id) for m in missing) == [str(UUID(int=3)), str(UUID(int=4))]
