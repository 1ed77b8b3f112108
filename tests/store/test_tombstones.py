"""The deletion trigger: a tombstone row and a NOTIFY, only for rows that named an instance."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
from store_helpers import App

from reconciler.hints import Hint
from reconciler.model import Tombstone
from reconciler.store import Store
from reconciler.store.names import SqlNames


async def _tombstones(store: Store) -> list[Tombstone]:
    """The tombstones as a pass sees them: in its memory, oldest first."""
    return list((await store.memory.load()).tombstones.values())


async def test_deleting_a_row_writes_a_tombstone_and_notifies(store: Store, app: App) -> None:
    await store.desired.install_trigger()
    await store.desired.install_trigger()
    org = uuid.uuid4()
    named = await app.insert(instance_name="clinic-gone", organization_id=org)
    other = await app.insert(instance_name="clinic-email", type="email")
    broken = await app.insert(config={"instance_name": ""})
    kept = await app.insert(instance_name="clinic-kept")

    async with store.memory.listen_hints() as names:
        for row_id in (other, broken, named):
            await app.conn.execute(f"DELETE FROM {app.table} WHERE id = $1", row_id)
        with anyio.fail_after(5):
            assert await names.receive() == Hint("tombstone", "", "clinic-gone")

    [tombstone] = await _tombstones(store)
    assert (tombstone.instance_name, tombstone.organization_id) == ("clinic-gone", org)
    await store.memory.retire_tombstones(["clinic-gone"])
    assert await _tombstones(store) == []
    assert (await app.row(kept))["status"] == "connected"


async def test_one_trigger_and_a_second_deletion_refreshes_the_tombstone(
    store: Store, app: App
) -> None:
    await store.desired.install_trigger()
    await store.desired.install_trigger()
    first = await app.insert(instance_name="clinic-dup")
    second = await app.insert(instance_name="clinic-dup")
    await app.conn.execute(f"DELETE FROM {app.table} WHERE id = $1", first)
    [early] = await _tombstones(store)
    await app.conn.execute(f"DELETE FROM {app.table} WHERE id = $1", second)
    [late] = await _tombstones(store)
    assert late.deleted_at > early.deleted_at
    triggers = await app.conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal",
        app.table)
    assert triggers == 2  # the deletion trigger and the row hints, each once


async def test_the_listener_ends_when_its_connection_is_lost(
    store: Store, app: App, db_names: Any
) -> None:
    channel = SqlNames.parse(db_names.integrations_table, db_names.schema).hint_channel
    async with store.memory.listen_hints() as names:
        killed = await app.conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
            f'LISTEN "{channel}"')
        assert killed == 1
        with anyio.fail_after(5):
            async for _ in names:
                pass


async def test_a_row_naming_no_possible_instance_leaves_no_tombstone(
    store: Store, app: App
) -> None:
    await store.desired.install_trigger()
    too_long = await app.insert(instance_name="clinic-" + "9" * 300)
    await app.conn.execute(f"DELETE FROM {app.table} WHERE id = $1", too_long)
    assert await _tombstones(store) == []


async def test_rows_inserted_or_changed_are_hinted_and_the_trigger_upgrades_in_place(
    store: Store, app: App
) -> None:
    await store.desired.install_trigger()
    await store.desired.install_trigger()
    async with store.memory.listen_hints() as hints:
        row_id = await app.insert(instance_name="clinic-new")
        await app.conn.execute(f"UPDATE {app.table} SET status = 'disconnected' WHERE id = $1",
                               row_id)
        await app.conn.execute(
            f"UPDATE {app.table} SET config = '{{\"instance_name\": \"clinic-renamed\"}}'"
            " WHERE id = $1", row_id)
        await app.conn.execute(f"UPDATE {app.table} SET enabled = false WHERE id = $1", row_id)
        await store.memory.pass_hint(Hint("webhook", "s1", "clinic-passed", passed_on=True))
        seen = []
        with anyio.fail_after(5):
            while len(seen) < 6:
                seen.append(await hints.receive())
    assert seen == [Hint("row", "", "clinic-new"), Hint("row", "", "clinic-new"),
                    Hint("row", "", "clinic-renamed"), Hint("row", "", "clinic-new"),
                    Hint("row", "", "clinic-renamed"),
                    Hint("webhook", "s1", "clinic-passed", passed_on=True)]
