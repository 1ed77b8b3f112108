"""Leases (SPEC 7): one holder per server, epochs that fence out a replica that lost its lease."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from store_helpers import App

from reconciler.events import build_event
from reconciler.model import ActionKind, EventType, InstanceMemory, Memory, Outcome, StatusChange
from reconciler.store import LeaseLost, LeaseToken, Store


async def _take_over(store: Store, server: str, holder: str) -> LeaseToken:
    """Wait for the current lease to expire, as a standby replica does."""
    with anyio.fail_after(5):
        while True:
            if (token := await store.leases.acquire(server, holder)) is not None:
                return token
            await anyio.sleep(0.05)


async def test_acquire_renew_release(store: Store) -> None:
    a = await store.leases.acquire("br-1", "replica-a")
    assert a == LeaseToken("br-1", "replica-a", 1)
    assert await store.leases.acquire("br-1", "replica-b") is None
    assert await store.leases.acquire("br-2", "replica-b") == LeaseToken("br-2", "replica-b", 1)
    assert await store.leases.acquire("br-1", "replica-a") == a
    assert await store.leases.renew(a)
    assert not await store.leases.renew(LeaseToken("br-1", "replica-b", 1))
    assert not await store.leases.renew(LeaseToken("br-1", "replica-a", 7))

    await store.leases.release(a)

    assert not await store.leases.renew(a)
    b = await store.leases.acquire("br-1", "replica-b")
    assert b == LeaseToken("br-1", "replica-b", 2)
    await store.leases.release(b)
    assert await store.leases.acquire("br-1", "replica-a") == LeaseToken("br-1", "replica-a", 3)


async def test_takeover_after_expiry_fences_out_the_old_holder(store: Store, app: App) -> None:
    row_id = await app.insert(instance_name="clinic-a", status="connected")
    old = await store.leases.acquire("br-1", "replica-a", ttl=0.2)
    assert old is not None

    new = await _take_over(store, "br-1", "replica-b")

    assert new.epoch == old.epoch + 1
    assert not await store.leases.renew(old)
    action = StatusChange(kind=ActionKind.MARK_DISCONNECTED, server="br-1",
                          instance_name="clinic-a", reason="logged_out", row_id=row_id,
                          expected_status="connected", disconnect_reason="logged_out")
    event = build_event(EventType.DISCONNECTED, instance_name="clinic-a", organization_id=None,
                        server="br-1", reason="logged_out", occurred_at=datetime.now(UTC))
    before = await app.row(row_id)
    memory = Memory(instances={("br-1", "clinic-a"): InstanceMemory(
        server="br-1", instance_name="clinic-a", first_seen=datetime.now(UTC))})

    with pytest.raises(LeaseLost, match="replica-a"):
        await store.decisions.update_status(action, event=event, lease=old)
    with pytest.raises(LeaseLost):
        await store.decisions.record(action, Outcome.OK, event=event, lease=old)
    with pytest.raises(LeaseLost):
        await store.memory.save(memory, servers=["br-1"], leases={"br-1": old})

    assert await app.row(row_id) == before
    assert await store.decisions.audit_rows() == []
    assert await store.outbox.count_pending() == 0
    assert (await store.memory.load()).instances == {}

    assert await store.decisions.update_status(action, event=event, lease=new)
    await store.memory.save(memory, servers=["br-1"], leases={"br-1": new})
    assert [r["epoch"] for r in await store.decisions.audit_rows()] == [new.epoch]


async def test_an_expired_lease_retaken_by_its_holder_is_a_new_term(
    store: Store, app: App, db_names: Any
) -> None:
    first = await store.leases.acquire("br-1", "replica-a", ttl=0.2)
    assert first is not None
    with anyio.fail_after(5):
        while True:
            if await app.conn.fetchval(
                f'SELECT expires_at <= now() FROM "{db_names.schema}".leases'
                " WHERE server = 'br-1'"
            ):
                break
            await anyio.sleep(0.05)
    assert not await store.leases.renew(first)
    again = await store.leases.acquire("br-1", "replica-a")
    assert again == LeaseToken("br-1", "replica-a", first.epoch + 1)


async def test_the_decision_to_delete_is_fenced(store: Store, app: App) -> None:
    await app.insert(instance_name="clinic-a")
    old = await store.leases.acquire("br-1", "replica-a", ttl=0.2)
    assert old is not None
    assert await store.desired.row_names_instance("clinic-a", lease=old)
    assert not await store.desired.row_names_instance("clinic-b", lease=old)
    await _take_over(store, "br-1", "replica-b")
    with pytest.raises(LeaseLost):
        await store.desired.row_names_instance("clinic-b", lease=old)


async def test_an_operator_take_over_fences_the_live_holder_at_once(store: Store) -> None:
    daemon = await store.leases.acquire("br-1", "daemon")
    assert daemon is not None
    operator = await store.leases.acquire("br-1", "operator-once", take_over=True)
    assert operator == LeaseToken("br-1", "operator-once", daemon.epoch + 1)
    assert not await store.leases.renew(daemon)
    assert await store.leases.acquire("br-1", "daemon") is None
    await store.leases.release(operator)
    assert await store.leases.acquire("br-1", "daemon") == LeaseToken(
        "br-1", "daemon", operator.epoch + 1)
