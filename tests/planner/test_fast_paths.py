"""The planner's shortcuts (one view for a plan and its population, indexes that spare a pass
over 10,000 names, memory entries kept as the very objects) decide as their plain definitions.

The oracles are written from the definitions, not from the indexes: a name's copies and whether
it is listed or desired by the one name rule, scanned over the raw inputs.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import planner
from reconciler.model import LiveState, Memory, ObservedInstance, ServerInventory
from reconciler.names import instance_key
from reconciler.planner.view import build_view, is_managed
from tests.planner.builders import ENFORCE, inst, name, row, rows, server
from tests.planner.strategies import NOW, SERVERS, Scenario, scenarios

THOROUGH = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TOLERANT = re.compile(r"[\s\u200b]*[Cc]linic-(?P<org>[0-9a-zA-Z-]{3,36})-(?P<ts>[0-9]+)[\s\u200b]*")
"""A managed pattern that admits surrounding blanks, so that the key indexes have work to do."""
_BLANKS = ("", "", "", " ", "\u200b", "\t")
_IDS = (None, None, "", "id-1", "id-2")


@st.composite
def respelled(draw: st.DrawFn) -> Scenario:
    """Scenarios whose names are sometimes spelled with blanks, whose instances carry ids and
    sometimes a server of their own, listed in either order, under either managed pattern."""
    s = draw(scenarios())

    def spelled(n: str) -> str:
        if draw(st.integers(0, 7)):
            return n
        return draw(st.sampled_from(_BLANKS)) + n + draw(st.sampled_from(_BLANKS))

    reads = []
    for read in s.reads:
        if isinstance(read, ServerInventory):
            found = [replace(i, name=spelled(i.name), instance_id=draw(st.sampled_from(_IDS)),
                             server=i.server if draw(st.integers(0, 9)) else "elsewhere")
                     for i in read.instances]
            read = replace(read, instances=tuple(found[::draw(st.sampled_from((1, -1)))]))
        reads.append(read)
    instances = tuple(replace(r, instance_name=spelled(r.instance_name))
                      for r in s.desired.instances)
    memory = replace(s.memory, instances={
        k: replace(e, instance_id=draw(st.sampled_from(_IDS)),
                   not_connected_reason=draw(st.sampled_from((None, "connection_closed"))))
        for k, e in s.memory.instances.items()})
    policy = replace(s.policy, managed_pattern=TOLERANT) if draw(st.booleans()) else s.policy
    return replace(s, desired=replace(s.desired, instances=instances[::-1]), reads=tuple(reads),
                   memory=memory, policy=policy)


@THOROUGH
@given(respelled(), st.booleans(),
       st.sampled_from((None, frozenset(), frozenset({"s1"}), frozenset(SERVERS))),
       st.dictionaries(st.sampled_from(SERVERS), st.integers(0, 12), max_size=2))
def test_a_pass_plans_and_counts_as_plan_and_population_do(
    s: Scenario, chained: bool, read_now: frozenset[str] | None, recent: dict[str, int]
) -> None:
    inputs = (s.desired, s.reads, s.memory, s.policy, s.now)
    previous = planner.population(*inputs) if chained else None
    later = (s.desired, s.reads, s.memory, s.policy, s.now + timedelta(seconds=5))
    assert planner.plan_and_population(*later, previous, read_now, recent_deletions=recent) == (
        planner.plan(*later, recent_deletions=recent),
        planner.population(*later, previous, read_now))


@THOROUGH
@given(respelled())
def test_an_unchanged_memory_entry_is_the_input_object(s: Scenario) -> None:
    """What the store's `new is old` relies on; a second pass changes little, so check it too."""
    memory = s.memory
    for _ in range(2):
        after = s.plan().memory
        for key, entry in after.instances.items():
            if key in memory.instances and entry == memory.instances[key]:
                assert entry is memory.instances[key], key
        s, memory = replace(s, memory=after), after


def test_a_warm_pass_without_drift_keeps_every_entry_object() -> None:
    names = [name(i) for i in range(6)]
    state = rows(*names[:4], status="connected")
    state = replace(state, instances=(*state.instances, row(names[4], "pending", id=9),
                                      row(names[5], "disconnected", id=10, reason="logged_out")))
    listed = server("s1", *(inst(n, number=f"551190000000{i}") for i, n in enumerate(names[:4])),
                    inst(names[4], LiveState.CLOSE), inst(names[5], LiveState.CLOSE))
    warm = planner.plan(state, [listed], Memory(), ENFORCE, NOW).memory
    again = planner.plan(state, [listed], warm, ENFORCE, NOW + timedelta(seconds=30))
    assert again.actions == ()
    assert all(again.memory.instances[k] is v for k, v in warm.instances.items())
    assert again.memory.instances.keys() == warm.instances.keys()


def _managed_copies(s: Scenario) -> list[ObservedInstance]:
    """Each complete read's managed instances, the first listing of a name per server."""
    failed = {r.server for r in s.reads if not isinstance(r, ServerInventory)}
    found: dict[tuple[str, str], ObservedInstance] = {}
    for read in s.reads:
        if isinstance(read, ServerInventory) and read.server not in failed:
            for i in read.instances:
                if is_managed(s.policy, i.name):
                    found.setdefault((read.server, i.name), replace(i, server=read.server))
    return [found[k] for k in sorted(found)]


@THOROUGH
@given(respelled())
def test_the_view_indexes_agree_with_the_one_name_rule(s: Scenario) -> None:
    view = build_view(s.desired, s.reads, s.memory, s.policy, s.now)
    copies = _managed_copies(s)
    complete = [r for r in s.reads if isinstance(r, ServerInventory)
                and r.server not in view.failed]
    listed = {i.name for r in complete for i in r.instances}
    probes = {*listed, *(r.instance_name for r in s.desired.instances),
              *(instance_key(n) for n in listed), *(f" {n}\u200b" for n in listed)}
    for probe in probes:
        exact = sorted((c for c in copies if c.name == probe), key=lambda c: c.server)
        by_key = sorted((c for c in copies if instance_key(c.name) == instance_key(probe)),
                        key=lambda c: (c.name, c.server))
        referred = exact or by_key
        assert view.copies_named(probe) == tuple(exact)
        assert view.copies_of(probe) == tuple(referred)
        assert view.judged(probe) == next(
            (c for c in referred if c.live is LiveState.OPEN), referred[0] if referred else None)
        assert view.is_listed(probe) == any(
            instance_key(n) == instance_key(probe) for n in listed)
        assert view.is_desired(probe) == any(
            instance_key(r.instance_name) == instance_key(probe) for r in s.desired.instances)
    for server_, on_server in view.managed.items():
        assert [i.name for i in on_server] == sorted(c.name for c in copies
                                                     if c.server == server_)
        assert dict(view.observed[server_]) == {i.name: i for i in on_server}
    for named, of_name in view.rows_by_name.items():
        assert [r.id for r in of_name] == sorted(r.id for r in s.desired.instances
                                                 if r.instance_name == named)
