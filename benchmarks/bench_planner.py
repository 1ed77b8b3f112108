"""The pure planner alone, on a warm no-drift pass: `plan` and `population` CPU per call.

    python benchmarks/bench_planner.py [--instances 10000] [--desired 10000] [--servers 1]

Synthetic inputs in bench_pass's mix (60% open, 20% closed by a 401 device_removed, 20% never
paired), every instance in the status its row would be given; `--desired` below `--instances`
leaves the rest orphans (confirmed, held back by the blast radius). The memory is the one a pass
leaves, so each timed call is a warm pass that finds nothing new to do. By default the memory
passed in is the very one a plan returned and all inputs share their name strings; `--fresh`
decodes rows, listings and memory each anew, sharing no object (names are then compared by their
characters, and every input is touched in cache lines of its own). Prints the median and best of
the timed calls (process time; `plan_and_population` is what a pass calls), and how many memory
entries came back as the very objects passed in.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from random import Random

from reconciler import planner
from reconciler.model import (
    DesiredInstance,
    DesiredState,
    LiveState,
    Memory,
    Mode,
    ObservedInstance,
    Policy,
    RowStatus,
    ServerInventory,
)
from reconciler.reasons import classify

NOW = datetime(2025, 11, 15, 16, 45, tzinfo=UTC)
DEVICE_REMOVED = {
    "error": {"data": {"content": [{"tag": "conflict", "attrs": {"type": "device_removed"}}]}}
}


def inputs(
    instances: int, desired: int, servers: int
) -> tuple[DesiredState, list[ServerInventory]]:
    rng = Random(instances)
    listed: dict[str, list[ObservedInstance]] = {f"evo-{s}": [] for s in range(servers)}
    rows: list[DesiredInstance] = []
    removed = classify(401, DEVICE_REMOVED)
    for index in range(instances):
        org = uuid.UUID(int=rng.getrandbits(128), version=4)
        created = NOW - timedelta(days=30) + timedelta(minutes=index)
        name = f"clinic-{org}-{int(created.timestamp() * 1000)}"
        server = f"evo-{index % servers}"
        kind = index % 5
        jid = f"55119{80000000 + index:08d}@s.whatsapp.net" if kind != 4 else None
        live, stored, status, reason = {
            0: (LiveState.OPEN, "open", RowStatus.CONNECTED, None),
            1: (LiveState.OPEN, "open", RowStatus.CONNECTED, None),
            2: (LiveState.OPEN, "open", RowStatus.CONNECTED, None),
            3: (LiveState.CLOSE, "close", RowStatus.DISCONNECTED, removed.reason),
            4: (LiveState.CLOSE, "close", RowStatus.PENDING, None),
        }[kind]
        listed[server].append(ObservedInstance(
            server=server, name=name, stored_status=stored, live=live, owner_jid=jid,
            number=jid.split("@")[0] if jid else None, created_at=created,
            disconnect=removed if kind == 3 else None, instance_id=str(uuid.UUID(int=index))))
        if index < desired:
            rows.append(DesiredInstance(
                id=uuid.UUID(int=rng.getrandbits(128), version=4), organization_id=org,
                instance_name=name, enabled=True, status=status.value, disconnect_reason=reason))
    reads = [ServerInventory(server=s, api_line="v2", version="2.3.0", client_name=None,
                             instances=tuple(found)) for s, found in listed.items()]
    return DesiredState(tuple(rows)), reads


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    spent = []
    for _ in range(repeats):
        started = time.process_time()
        call()
        spent.append(time.process_time() - started)
    return statistics.median(spent) * 1000, min(spent) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--desired", type=int, default=None)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--fresh", action="store_true",
                        help="rows, listings and memory each decoded anew, sharing no object")
    args = parser.parse_args()
    desired, reads = inputs(args.instances, args.desired if args.desired is not None
                            else args.instances, args.servers)
    policy = Policy(mode=Mode.ENFORCE, orphan_grace=timedelta(days=1))
    memory = Memory()
    for _ in range(3):  # warm: the memory and baselines a pass leaves
        memory = planner.plan(desired, reads, memory, policy, NOW).memory
    desired = DesiredState(tuple(sorted(desired.instances, key=lambda r: r.id)))  # ORDER BY id
    if args.fresh:
        desired, reads, memory = (pickle.loads(pickle.dumps(x)) for x in (desired, reads, memory))
    warm = planner.plan(desired, reads, memory, policy, NOW)
    same = sum(1 for k, v in warm.memory.instances.items() if memory.instances.get(k) is v)
    print(f"{args.instances} instances, {len(desired.instances)} rows, {args.servers} servers: "
          f"{len(warm.actions)} actions, {len(warm.drift)} drift, "
          f"{same}/{len(warm.memory.instances)} memory entries unchanged by identity")
    for label, call in (
        ("plan", lambda: planner.plan(desired, reads, memory, policy, NOW)),
        ("population", lambda: planner.population(desired, reads, memory, policy, NOW)),
        ("plan_and_population",
         lambda: planner.plan_and_population(desired, reads, memory, policy, NOW)),
    ):
        median, best = timed(call, args.repeats)
        print(f"{label:20s} median {median:7.1f} ms  best {best:7.1f} ms")


if __name__ == "__main__":
    main()
