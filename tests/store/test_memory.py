"""The memory the guards need survives passes and restarts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from store_helpers import App

from reconciler.model import InstanceMemory, LiveState, Memory, PassCounts, Tombstone
from reconciler.store import Store

T0 = datetime(2025, 11, 15, 16, 45, 0, 123456, tzinfo=UTC)


def _memory() -> Memory:
    full = InstanceMemory(
        server="br-1", instance_name="clinic-a", first_seen=T0,
        orphan_since=T0 + timedelta(seconds=30), orphan_streak=3,
        not_connected_since=T0 + timedelta(minutes=1), not_connected_reason="connection_lost",
        last_live=LiveState.CONNECTING, delete_requested_at=T0 + timedelta(minutes=2),
        delete_reason="orphan", delete_attempts=2, next_delete_at=T0 + timedelta(minutes=4))
    bare = InstanceMemory(server="br-2", instance_name="clinic-a", first_seen=T0)
    return Memory(
        instances={("br-1", "clinic-a"): full, ("br-2", "clinic-a"): bare},
        last_counts={"br-1": PassCounts(desired=10, observed=12),
                     "br-2": PassCounts(desired=10, observed=0)},
        missing_streaks={"clinic-gone": 2},
        reported_duplicates=frozenset({"duplicate_number:5511999990000"}),
    )


async def test_round_trip_survives_a_new_store(store: Store, database_url: str,
                                               db_names: Any) -> None:
    memory = _memory()
    await store.memory.save(memory, servers=["br-1", "br-2"])
    assert await store.memory.load() == memory

    restarted = await Store.connect(database_url, integrations_table=db_names.integrations_table,
                                    schema=db_names.schema)
    try:
        await restarted.migrate()
        assert await restarted.memory.load() == memory
    finally:
        await restarted.close()


async def test_saving_one_server_leaves_the_others(store: Store) -> None:
    await store.memory.save(_memory(), servers=["br-1", "br-2"])
    later = InstanceMemory(server="br-1", instance_name="clinic-b", first_seen=T0)
    await store.memory.save(
        Memory(instances={("br-1", "clinic-b"): later}, missing_streaks={},
               reported_duplicates=frozenset()),
        servers=["br-1"])

    loaded = await store.memory.load()

    assert loaded.instances == {("br-1", "clinic-b"): later,
                                ("br-2", "clinic-a"): _memory().instances[("br-2", "clinic-a")]}
    assert loaded.last_counts == {"br-2": PassCounts(desired=10, observed=0)}
    assert loaded.missing_streaks == {}
    assert loaded.reported_duplicates == frozenset()


async def test_unprocessed_tombstones_are_part_of_memory(store: Store, app: App) -> None:
    await store.desired.install_trigger()
    org = uuid.uuid4()
    row_id = await app.insert(instance_name="clinic-deleted", organization_id=org)
    await app.conn.execute(f"DELETE FROM {app.table} WHERE id = $1", row_id)

    memory = await store.memory.load()
    await store.memory.save(memory, servers=["br-1"])

    [tombstone] = memory.tombstones.values()
    assert (tombstone.instance_name, tombstone.organization_id) == ("clinic-deleted", org)
    assert (await store.memory.load()).tombstones == {"clinic-deleted": tombstone}
    assert isinstance(tombstone, Tombstone) and tombstone.deleted_at.tzinfo is not None
