"""Readable builders for the example-based planner tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from reconciler import planner
from reconciler.model import (
    Action,
    ActionKind,
    DeleteResult,
    DesiredInstance,
    DesiredState,
    Disconnect,
    Drift,
    DriftKind,
    LiveState,
    Memory,
    Mode,
    ObservedInstance,
    Plan,
    Policy,
    ServerInventory,
    ServerRead,
    ServerReadError,
)
from tests.planner.strategies import NOW, ORGS, ago, clinic_name

ENFORCE = Policy(mode=Mode.ENFORCE)


def name(n: int, org: UUID = ORGS[0]) -> str:
    """The n-th platform-style instance name of an organisation."""
    return clinic_name(org, 1763224272000 + n)


def row(
    instance: str,
    status: str = "connected",
    *,
    id: int = 1,
    enabled: bool = True,
    org: UUID | None = ORGS[0],
    reason: str | None = None,
) -> DesiredInstance:
    return DesiredInstance(
        id=UUID(int=id),
        organization_id=org,
        instance_name=instance,
        enabled=enabled,
        status=status,
        disconnect_reason=reason,
    )


def rows(*instances: str, status: str = "connected") -> DesiredState:
    """One enabled row per name, ids 1, 2, ..."""
    return DesiredState(tuple(row(n, status, id=i + 1) for i, n in enumerate(instances)))


def desired(*items: DesiredInstance) -> DesiredState:
    return DesiredState(tuple(items))


def inst(
    instance: str,
    live: LiveState = LiveState.OPEN,
    *,
    server: str = "s1",
    stored: str | None = None,
    number: str | None = None,
    created: datetime | None = None,
    disconnect: Disconnect | None = None,
) -> ObservedInstance:
    """An instance as listed; old enough for the default grace unless `created` says otherwise."""
    return ObservedInstance(
        server=server,
        name=instance,
        stored_status=stored if stored is not None else _stored(live, disconnect),
        live=live,
        owner_jid=f"{number}:3@s.whatsapp.net" if number else None,
        number=number,
        created_at=created if created is not None else ago(3600),
        disconnect=disconnect,
    )


def _stored(live: LiveState, disconnect: Disconnect | None) -> str:
    if disconnect is not None:
        return "close"
    return "open" if live is LiveState.UNKNOWN else live.value


def server(name_: str, *instances: ObservedInstance) -> ServerInventory:
    return ServerInventory(
        server=name_,
        api_line="v2",
        version="2.3.6",
        client_name=name_,
        instances=tuple(replace(i, server=name_) for i in instances),
    )


def failed(name_: str) -> ServerReadError:
    return ServerReadError(name_, "read_observed", "HTTP 500")


def run(
    state: DesiredState,
    reads: Sequence[ServerRead],
    memory: Memory | None = None,
    policy: Policy = ENFORCE,
    now: datetime = NOW,
) -> Plan:
    return planner.plan(state, reads, memory or Memory(), policy, now)


def passes(
    count: int,
    state: DesiredState,
    reads: Sequence[ServerRead],
    memory: Memory | None = None,
    policy: Policy = ENFORCE,
    start: datetime = NOW,
    every: timedelta = timedelta(seconds=30),
) -> Plan:
    """`count` passes over the same observations, each remembering the previous one; the last
    plan is returned (nothing is applied in between)."""
    plan = run(state, reads, memory, policy, start)
    for i in range(1, count):
        plan = run(state, reads, plan.memory, policy, start + i * every)
    return plan


def verified(plan: Plan, now: datetime = NOW) -> Memory:
    deletes = [a for a in plan.actions if a.kind is ActionKind.DELETE and a.blocked_by is None]
    return planner.record_outcomes(plan.memory, [(a, DeleteResult.VERIFIED) for a in deletes], now)


def of_kind(plan: Plan, kind: ActionKind) -> list[Action]:
    return [a for a in plan.actions if a.kind is kind]


def deletes(plan: Plan) -> list[Action]:
    return of_kind(plan, ActionKind.DELETE)


def drift(plan: Plan, kind: DriftKind) -> list[tuple[str, str]]:
    return [(d.server, d.instance_name) for d in plan.drift if d.kind is kind]


def drift_of(plan: Plan, instance: str) -> set[DriftKind]:
    return {d.kind for d in plan.drift if d.instance_name == instance}


def only(items: Sequence[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def drifts(plan: Plan) -> list[Drift]:
    return list(plan.drift)
