"""Reading the desired state: usable rows, ignored rows, and broken rows that never stop a pass."""

from __future__ import annotations

import json
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

    desired = await store.desired.read()

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

    desired = await store.desired.read()

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

    desired = await store.desired.read()

    assert [d.id for d in desired.instances] == [good]
    assert desired.invalid_rows == 13


async def test_point_recheck(store: Store, app: App) -> None:
    await app.insert(instance_name="clinic-here")
    await app.insert(instance_name="clinic-other-type", type="email")
    await app.insert(instance_name="clinic-disabled", enabled=False)

    assert await store.desired.row_names_instance("clinic-here")
    assert await store.desired.row_names_instance("clinic-disabled")
    assert not await store.desired.row_names_instance("clinic-other-type")
    assert not await store.desired.row_names_instance("clinic-absent")
    assert not await store.desired.row_names_instance("clinic-HERE")


UNREADABLE = {
    "list": {"instance_name": ["clinic-listed"]},
    "object": {"instance_name": {"name": "clinic-object"}},
    "double-encoded": {"instance_name": json.dumps("clinic-quoted")},
    "config a JSON string": json.dumps({"instance_name": "clinic-stringly"}),
    "nested deeper": {"instance_name": None,
                      "old": json.dumps([{"n": json.dumps(" clinic-deep\t")}])},
    "too long, other field": {"instance_name": "c" * 256, "previous": "clinic-previous"},
}


async def test_unreadable_rows_claim_every_string_in_their_config(
        store: Store, app: App) -> None:
    """SPEC 4.3 rule 5: what such a row might be naming is claimed, by the one name rule."""
    for config in UNREADABLE.values():
        await app.insert(config=config)
    good = await app.insert(config={"instance_name": "clinic-ok", "previous": "clinic-old"})

    desired = await store.desired.read()

    assert [d.id for d in desired.instances] == [good]
    assert desired.invalid_rows == len(UNREADABLE)
    assert {"clinic-listed", "clinic-object", "clinic-quoted", "clinic-stringly", "clinic-deep",
            "clinic-previous"} <= desired.claimed
    assert "clinic-old" not in desired.claimed, "a readable row names only its instance_name"
    assert "clinic-ok" not in desired.claimed


async def test_the_point_recheck_uses_the_one_name_rule(store: Store, app: App) -> None:
    await app.insert(instance_name="clinic-spaced ")
    await app.insert(instance_name="\ufeffclinic-bom")
    await app.insert(instance_name='clinic-"odd"\\name\n')

    assert await store.desired.row_names_instance("clinic-spaced")
    assert await store.desired.row_names_instance(" clinic-spaced\u00a0")
    assert await store.desired.row_names_instance("clinic-bom")
    assert await store.desired.row_names_instance('clinic-"odd"\\name')
    assert not await store.desired.row_names_instance("clinic-spaced-not")
    assert not await store.desired.row_names_instance("clinic-SPACED")


async def test_the_point_recheck_refuses_what_an_unreadable_row_claims(
        store: Store, app: App) -> None:
    for config in UNREADABLE.values():
        await app.insert(config=config)
    await app.insert(config={"instance_name": "clinic-ok", "previous": "clinic-old"})
    await app.insert(config={"instance_name": ["clinic-other-type"]}, type="email")

    for claimed in ("clinic-listed", "clinic-object", "clinic-quoted", "clinic-stringly",
                    "clinic-deep", "clinic-previous"):
        assert await store.desired.row_names_instance(claimed), claimed
    assert not await store.desired.row_names_instance("clinic-old")
    assert not await store.desired.row_names_instance("clinic-other-type")
    assert not await store.desired.row_names_instance("clinic-absent")
