"""`disconnected`, `reconnected`, `missing` and the restart guard."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from uuid import UUID

from reconciler.model import (
    ActionKind,
    DriftKind,
    EventType,
    InstanceMemory,
    LiveState,
    Memory,
)
from reconciler.reasons import classify
from tests.planner.builders import (
    ENFORCE,
    desired,
    drift,
    failed,
    inst,
    name,
    of_kind,
    only,
    row,
    rows,
    run,
    server,
)
from tests.planner.strategies import DEVICE_REMOVED, NOW, ORGS, ago

LATER = NOW + timedelta(seconds=120)
DEVICE_GONE = classify(401, DEVICE_REMOVED)


def test_a_terminal_disconnect_is_marked_at_once() -> None:
    reads = [server("s1", inst(name(1), LiveState.CLOSE, disconnect=DEVICE_GONE))]
    plan = run(desired(row(name(1), org=ORGS[1])), reads)
    mark = only(plan.actions)
    assert mark.kind is ActionKind.MARK_DISCONNECTED
    assert (mark.server, mark.instance_name, mark.row_id) == ("s1", name(1), UUID(int=1))
    assert (mark.reason, mark.disconnect_reason) == ("device_removed", "device_removed")
    assert (mark.expected_status, mark.event) == ("connected", EventType.DISCONNECTED)
    assert mark.organization_id == ORGS[1], "the row's organisation, not the name's"
    assert drift(plan, DriftKind.DISCONNECTED) == [("s1", name(1))]


def test_a_transient_disconnect_needs_two_observations_disconnect_after_apart() -> None:
    reads = [server("s1", inst(name(1), LiveState.CONNECTING))]
    first = run(rows(name(1)), reads)
    assert first.actions == () and first.drift == ()
    entry = first.memory.instances[("s1", name(1))]
    assert (entry.not_connected_since, entry.not_connected_reason) == (NOW, "connection_closed")
    early = run(rows(name(1)), reads, first.memory, now=LATER - timedelta(seconds=1))
    assert early.actions == ()
    assert early.memory.instances[("s1", name(1))].not_connected_since == NOW, "clock kept"
    due = run(rows(name(1)), reads, early.memory, now=LATER)
    mark = only(due.actions)
    assert (mark.kind, mark.reason) == (ActionKind.MARK_DISCONNECTED, "connection_closed")


def test_a_non_terminal_code_is_reported_but_still_waits() -> None:
    reads = [server("s1", inst(name(1), LiveState.CLOSE, disconnect=classify(440)))]
    assert run(rows(name(1)), reads).actions == ()
    memory = run(rows(name(1)), reads).memory
    assert only(run(rows(name(1)), reads, memory, now=LATER).actions).reason == (
        "connection_replaced")


def test_an_open_observation_restarts_the_clock() -> None:
    down = [server("s1", inst(name(1), LiveState.CONNECTING))]
    up = [server("s1", inst(name(1), LiveState.OPEN))]
    first = run(rows(name(1)), down)
    back = run(rows(name(1)), up, first.memory, now=NOW + timedelta(seconds=60))
    assert back.memory.instances[("s1", name(1))].not_connected_since is None
    again = run(rows(name(1)), down, back.memory, now=NOW + timedelta(seconds=130))
    assert again.actions == ()


def test_unknown_is_no_verdict_and_leaves_the_clock_alone() -> None:
    unknown = [server("s1", inst(name(1), LiveState.UNKNOWN, disconnect=DEVICE_GONE))]
    plan = run(rows(name(1)), unknown)
    assert plan.actions == (), "not even a terminal reason without a live verdict"
    since = InstanceMemory("s1", name(1), first_seen=ago(900), not_connected_since=ago(60),
                           not_connected_reason="connection_closed",
                           last_live=LiveState.CONNECTING)
    memory = Memory(instances={("s1", name(1)): since})
    later = run(rows(name(1)), unknown, memory, now=LATER)
    assert later.actions == ()
    assert later.memory.instances[("s1", name(1))] == since


def test_the_restart_guard_holds_transient_marks_on_a_server_in_a_wave() -> None:
    names = [name(n) for n in range(1, 6)]
    connecting = [inst(n, LiveState.CONNECTING) for n in names[:3]]
    terminal = inst(names[3], LiveState.CLOSE, disconnect=classify(403))
    reads = [server("s1", *connecting, terminal, inst(names[4]))]
    memory = Memory(instances={
        ("s1", n): InstanceMemory("s1", n, first_seen=ago(900), not_connected_since=ago(600))
        for n in names[:3]
    })
    plan = run(rows(*names), reads, memory)
    assert plan.degraded_servers == frozenset({"s1"}), "3 of 5 connected rows > 50 %"
    assert [(a.instance_name, a.reason) for a in plan.actions] == [(names[3], "forbidden")]
    assert drift(plan, DriftKind.DISCONNECTED) == [("s1", names[3])]


def test_the_restart_guard_needs_three_and_more_than_the_fraction() -> None:
    names = [name(n) for n in range(1, 7)]
    memory = Memory(instances={
        ("s1", n): InstanceMemory("s1", n, first_seen=ago(900), not_connected_since=ago(600))
        for n in names
    })
    half = [server("s1", *(inst(n, LiveState.CONNECTING) for n in names[:3]),
                   *(inst(n) for n in names[3:]))]
    plan = run(rows(*names), half, memory)
    assert plan.degraded_servers == frozenset(), "3 of 6 is not more than half"
    assert len(of_kind(plan, ActionKind.MARK_DISCONNECTED)) == 3
    two = [server("s1", *(inst(n, LiveState.CONNECTING) for n in names[:2]))]
    plan = run(rows(*names[:2]), two, memory)
    assert plan.degraded_servers == frozenset(), "fewer than 3 is never a wave"
    assert len(of_kind(plan, ActionKind.MARK_DISCONNECTED)) == 2
    lenient = run(rows(*names), half, memory,
                  policy=replace(ENFORCE, mass_disconnect_fraction=0.4))
    assert lenient.degraded_servers == frozenset({"s1"})
    assert lenient.actions == ()


def test_reconnected_only_when_open_and_paired() -> None:
    reads = [server(
        "s1",
        inst(name(1), number="5511999990001"),
        inst(name(2), number="5511999990002"),
        inst(name(3)),
        inst(name(4), LiveState.CONNECTING, number="5511999990004"),
    )]
    state = desired(
        row(name(1), "disconnected", id=1, reason="device_removed"),
        row(name(2), "pending", id=2),
        row(name(3), "pending", id=3),
        row(name(4), "disconnected", id=4),
    )
    plan = run(state, reads)
    marks = of_kind(plan, ActionKind.MARK_CONNECTED)
    assert [(a.instance_name, a.expected_status) for a in marks] == [
        (name(1), "disconnected"), (name(2), "pending")]
    assert all((a.reason, a.event, a.disconnect_reason) == ("reconnected", EventType.CONNECTED,
                                                            None) for a in marks)
    assert plan.actions == tuple(marks)
    assert drift(plan, DriftKind.RECONNECTED) == [("s1", name(1)), ("s1", name(2))]


def test_disabled_rows_and_unknown_statuses_are_left_alone() -> None:
    reads = [server(
        "s1",
        inst(name(1), LiveState.CLOSE, disconnect=DEVICE_GONE),
        inst(name(2), number="5511999990002"),
        inst(name(3), LiveState.CLOSE, disconnect=DEVICE_GONE),
    )]
    state = desired(
        row(name(1), enabled=False, id=1),
        row(name(2), "disconnected", enabled=False, id=2),
        row(name(3), "paused", id=3),
        row(name(4), "pending", enabled=False, id=4),
        row(name(5), "archived", id=5),
    )
    memory = Memory(missing_streaks={name(4): 9, name(5): 9})
    plan = run(state, reads, memory)
    assert plan.actions == ()
    assert plan.drift == ()
    assert plan.memory.missing_streaks == {}


def test_a_row_on_several_servers_follows_its_open_copy_else_the_first_server() -> None:
    state = rows(name(1))
    split = [server("s2", inst(name(1), LiveState.CLOSE, disconnect=DEVICE_GONE)),
             server("s1", inst(name(1), LiveState.CONNECTING)),
             server("s3", inst(name(1)))]
    assert of_kind(run(state, split), ActionKind.MARK_DISCONNECTED) == []
    down = [split[1], split[0]]
    memory = run(state, down).memory
    mark = only(of_kind(run(state, down, memory, now=LATER), ActionKind.MARK_DISCONNECTED))
    assert (mark.server, mark.reason) == ("s1", "connection_closed")


def test_a_missing_instance_is_marked_once_after_the_confirmations() -> None:
    reads = [server("s1", inst(name(2)))]
    state = desired(row(name(1), "connected", id=1), row(name(2), id=2))
    first = run(state, reads)
    assert first.actions == ()
    assert first.memory.missing_streaks == {name(1): 1}
    second = run(state, reads, first.memory, now=NOW + timedelta(seconds=30))
    mark = only(second.actions)
    assert (mark.kind, mark.server, mark.instance_name) == (ActionKind.MARK_MISSING, "", name(1))
    assert (mark.reason, mark.disconnect_reason, mark.expected_status, mark.event) == (
        "instance_missing", "instance_missing", "connected", EventType.MISSING)
    assert drift(second, DriftKind.MISSING) == [("", name(1))]

    marked = desired(row(name(1), "disconnected", id=1, reason="instance_missing"),
                     row(name(2), id=2))
    after = run(marked, reads, second.memory, now=NOW + timedelta(seconds=60))
    assert after.actions == ()
    assert drift(after, DriftKind.MISSING) == [("", name(1))], "still drifting, not re-marked"


def test_missing_is_never_judged_when_a_read_failed() -> None:
    reads = [server("s1", inst(name(2))), failed("s2")]
    memory = Memory(missing_streaks={name(1): 4})
    plan = run(rows(name(1), name(2)), reads, memory)
    assert plan.actions == () and drift(plan, DriftKind.MISSING) == []
    assert plan.memory.missing_streaks == {name(1): 4}, "neither advanced nor reset"


def test_a_missing_streak_ends_when_the_instance_is_found() -> None:
    memory = Memory(missing_streaks={name(1): 1})
    plan = run(rows(name(1)), [server("s2", inst(name(1)))], memory)
    assert plan.memory.missing_streaks == {}


def test_an_unmanaged_instance_named_by_a_row_is_not_missing_and_not_touched() -> None:
    reads = [server("s1", inst("support-bot", LiveState.CLOSE, disconnect=DEVICE_GONE))]
    plan = run(rows("support-bot"), reads, Memory(missing_streaks={"support-bot": 3}))
    assert plan.actions == ()
    assert {d.kind for d in plan.drift} == {DriftKind.UNMANAGED}
