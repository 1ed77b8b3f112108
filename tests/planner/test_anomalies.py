"""A managed instance with an odd listing field is decided conservatively (SPEC 3).

It is never a delete candidate, whatever its age or streak: it is `orphan_pending` and the detail
says why. The rest of the server converges as usual.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.model import DriftKind, LiveState, Memory
from tests.planner.builders import deletes, drift, inst, name, passes, rows, server

KEPT = [name(n) for n in range(10, 14)]
ODD = "createdAt 'yesterday' is not an ISO-8601 timestamp"


def test_a_confirmed_orphan_with_an_anomaly_is_never_deleted() -> None:
    odd, plain = name(1), name(2)
    reads = [server("s1", *(inst(n) for n in KEPT),
                    replace(inst(odd, created=None), created_at=None, anomaly=ODD),
                    inst(plain))]
    plan = passes(5, rows(*KEPT), reads)
    assert [a.instance_name for a in deletes(plan)] == [plain], "the rest converges"
    assert drift(plan, DriftKind.ORPHAN_PENDING) == [("s1", odd)]
    [detail] = [d.detail for d in plan.drift if d.instance_name == odd]
    assert ODD in detail and "not deleted" in detail
    assert plan.memory.instances[("s1", odd)].orphan_streak == 5, "still an orphan, counted"


def test_once_the_listing_is_sound_again_the_orphan_is_decided_as_usual() -> None:
    odd = name(1)
    clean = inst(odd, live=LiveState.CLOSE)
    first = passes(3, rows(*KEPT),
                   [server("s1", *(inst(n) for n in KEPT), replace(clean, anomaly=ODD))])
    assert deletes(first) == []
    after = passes(1, rows(*KEPT), [server("s1", *(inst(n) for n in KEPT), clean)],
                   first.memory)
    assert [a.instance_name for a in deletes(after)] == [odd]


def test_a_desired_instance_with_an_anomaly_is_not_orphan_drift() -> None:
    odd = name(1)
    plan = passes(2, rows(*KEPT, odd),
                  [server("s1", *(inst(n) for n in KEPT), replace(inst(odd), anomaly=ODD))],
                  Memory())
    assert drift(plan, DriftKind.ORPHAN_PENDING) == [] and deletes(plan) == []
