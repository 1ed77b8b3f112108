"""The probe schedule as pure decisions: who is probed this pass, and what is reported meanwhile."""

from __future__ import annotations

from reconciler.evolution.liveness import (
    Bucket,
    Fingerprint,
    Probe,
    choose_probes,
    refill,
    state_from_last_probe,
)
from reconciler.model import LiveState

OPEN = Fingerprint("open", "551100@s.whatsapp.net", None)
CLOSED = Fingerprint("close", "551100@s.whatsapp.net", 401)
INTERVAL = 300.0


def test_first_pass_probes_wanted_instances_before_the_rest() -> None:
    listing = {"other-1": OPEN, "want-1": OPEN, "other-2": OPEN, "want-2": OPEN}
    chosen = choose_probes(listing, {"want-1", "want-2"}, {}, None, 1000.0, INTERVAL, budget=3)
    assert chosen[:2] == ["want-1", "want-2"] and len(chosen) == 3


def test_fresh_probes_are_not_repeated() -> None:
    probes = {"a": Probe(900.0, LiveState.OPEN, OPEN)}
    assert choose_probes({"a": OPEN}, {"a"}, probes, {"a"}, 1000.0, INTERVAL, budget=10) == []


def test_a_changed_row_is_probed_at_once_and_first() -> None:
    probes = {"stale": Probe(0.0, LiveState.OPEN, OPEN),
              "changed": Probe(990.0, LiveState.OPEN, OPEN)}
    listing = {"stale": OPEN, "changed": CLOSED}
    chosen = choose_probes(listing, {"stale", "changed"}, probes, {"stale", "changed"},
                           1000.0, INTERVAL, budget=1)
    assert chosen == ["changed"]


def test_an_instance_new_since_the_last_pass_is_urgent() -> None:
    probes = {"old": Probe(0.0, LiveState.OPEN, OPEN)}
    chosen = choose_probes({"old": OPEN, "new": OPEN}, {"old", "new"}, probes, {"old"},
                           1000.0, INTERVAL, budget=1)
    assert chosen == ["new"]


def test_overdue_instances_are_probed_oldest_first() -> None:
    probes = {n: Probe(t, LiveState.OPEN, OPEN) for n, t in (("a", 500.0), ("b", 100.0),
                                                            ("c", 300.0))}
    chosen = choose_probes({n: OPEN for n in "abc"}, set("abc"), probes, set("abc"),
                           1000.0, INTERVAL, budget=2)
    assert chosen == ["b", "c"]


def test_not_connected_instances_are_rechecked_sooner() -> None:
    probes = {"down": Probe(960.0, LiveState.CLOSE, CLOSED),
              "up": Probe(960.0, LiveState.OPEN, OPEN)}
    chosen = choose_probes({"down": CLOSED, "up": OPEN}, {"down", "up"}, probes, {"down", "up"},
                           1000.0, INTERVAL, budget=10)
    assert chosen == ["down"]


def test_budget_spreads_a_large_inventory_over_passes() -> None:
    listing = {f"i{n:03d}": OPEN for n in range(100)}
    probes: dict[str, Probe] = {}
    now = 0.0
    for _ in range(4):
        chosen = choose_probes(listing, set(listing), probes, set(listing), now, INTERVAL, 25)
        assert len(chosen) == 25
        probes.update({n: Probe(now, LiveState.OPEN, OPEN) for n in chosen})
        now += 30.0
    assert set(probes) == set(listing), "four passes of 25 cover all 100"
    assert choose_probes(listing, set(listing), probes, set(listing), now, INTERVAL, 25) == []


def test_state_from_last_probe() -> None:
    probe = Probe(1000.0, LiveState.CONNECTING, OPEN)
    assert state_from_last_probe(probe, OPEN, 1100.0, INTERVAL) == LiveState.CONNECTING
    assert state_from_last_probe(probe, CLOSED, 1100.0, INTERVAL) == LiveState.UNKNOWN, (
        "row changed since")
    assert state_from_last_probe(probe, OPEN, 1300.0, INTERVAL) == LiveState.UNKNOWN, "too old"
    assert state_from_last_probe(None, OPEN, 1100.0, INTERVAL) == LiveState.UNKNOWN


def test_bucket_refills_at_the_rate_up_to_its_capacity() -> None:
    assert refill(Bucket(0.0, 10.0), 12.0, rate=10.0, capacity=300.0) == Bucket(20.0, 12.0)
    assert refill(Bucket(290.0, 10.0), 20.0, rate=10.0, capacity=300.0).tokens == 300.0
    assert refill(Bucket(5.0, 10.0), 9.0, rate=10.0, capacity=300.0).tokens == 5.0
