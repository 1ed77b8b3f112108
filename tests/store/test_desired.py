"""Reading the desired state: usable rows, ignored rows, and broken rows that never stop a pass."""

from __future__ import annotations

import uuid

from store_helpers import App

from reconciler.model import DesiredInstance
from reconciler.store import Store


async def test_valid_disabled_and_duplicate_rows_are_desired(store: Store, app: App) -> None:
    org = uuid.uuid4()
    a = await app.insert(instance_name="clinic-a", organization_id=org,
                         status="disconnected", disconnect_reason="logged_out")
    b = await app.insert(instance_name="clinic-b", enabled=False, status="pending")
    dup1 = await app.insert(instance_name="clinic-dup")
    dup2 = await app.insert(instance_name="clinic-dup")

    desired = await store.read_desired()

    assert desired.invalid_rows == 0
    by_id = {d.id: d for d in desired.instances}
    assert by_id[a] == DesiredInstance(id=a, organization_id=org, instance_name="clinic-a",
                                       enabled=True, status="disconnected",
                                       disconnect_reason="logged_out")
    assert by_id[b].enabled is False and by_id[b].status == "pending"
    assert {by_id[dup1].instance_name, by_id[dup2].instance_name} == {"clinic-dup"}
    assert len(desired.instances) == 4


async def test_rows_of_other_types_and_providers_are_ignored(store: Store, app: App) -> None:
    await app.insert(instance_name="clinic-mail", type="email")
    await app.insert(instance_name="clinic-meta", provider="meta_cloud")
    await app.insert(config="just a string", type="sms")

    desired = await store.read_desired()

    assert desired.instances == ()
    assert desired.invalid_rows == 0


async def test_broken_configs_are_counted_and_skipped(store: Store, app: App) -> None:
    for config in ("a string", ["clinic-x"], 42, True, {}, {"instance_name": ""},
                   {"instance_name": "   "}, {"instance_name": 123},
                   {"instance_name": None}, {"instance_name": ["clinic-x"]},
                   {"instance_name": {"name": "clinic-x"}}, {"instance_name": "c" * 256}):
        await app.insert(config=config)
    await app.conn.execute(
        f"INSERT INTO {app.table} (organization_id, type, provider, config)"
        " VALUES ($1, 'whatsapp', 'evolution', 'null'::jsonb)", uuid.uuid4())
    good = await app.insert(instance_name="clinic-ok")

    desired = await store.read_desired()

    assert [d.id for d in desired.instances] == [good]
    assert desired.invalid_rows == 13


async def test_point_recheck(store: Store, app: App) -> None:
    await app.insert(instance_name="clinic-here")
    await app.insert(instance_name="clinic-other-type", type="email")
    await app.insert(instance_name="clinic-disabled", enabled=False)

    assert await store.row_names_instance("clinic-here")
    assert await store.row_names_instance("clinic-disabled")
    assert not await store.row_names_instance("clinic-other-type")
    assert not await store.row_names_instance("clinic-absent")
    assert not await store.row_names_instance("clinic-HERE")
