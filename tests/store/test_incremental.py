"""Reads and writes at the cost of what changed, to the very result of doing it all."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from store_helpers import App
from structlog.testing import capture_logs

from reconciler.events import build_event
from reconciler.model import (
    Delete,
    EventType,
    Flag,
    InstanceMemory,
    LiveState,
    Memory,
    ObservedInstance,
    PassCounts,
    ServerInventory,
)
from reconciler.store import LeaseToken, Store
from reconciler.store.rows import OBSERVATION_COLUMNS

SERVERS = ("br-1", "br-2", "br-3")
NAMES = tuple(f"clinic-{c}" for c in "abcdef")
KEYS = tuple((s, n) for s in SERVERS for n in NAMES)
GROUPS = ("duplicate_number:1", "duplicate_number:2", "duplicate_number:3")
T0 = datetime(2025, 11, 15, 16, 45, 0, 123456, tzinfo=UTC)

Tokens = dict[str, LeaseToken]


@pytest.fixture
async def twin(database_url: str, db_names: Any) -> AsyncIterator[Store]:
    """A second store, on a schema of its own, that always saves by replacing."""
    schema = f"{db_names.schema}_twin"
    s = await Store.connect(database_url, integrations_table=db_names.integrations_table,
                            schema=schema)
    try:
        await s.migrate()
        yield s
    finally:
        await s.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def _leases(store: Store) -> Tokens:
    tokens = {s: await store.leases.acquire(s, "replica-a", ttl=300) for s in SERVERS}
    assert all(tokens.values())
    return {s: t for s, t in tokens.items() if t is not None}


async def _tables(store: Store) -> tuple[list[tuple[object, ...]], ...]:
    """Every row a save writes, but for the time it was written."""
    async with store._db.snapshot("reading the tables") as conn:
        own = store._db.names.own
        return (
            [tuple(r) for r in await conn.fetch(
                f"SELECT {', '.join(OBSERVATION_COLUMNS)} FROM {own}.observations"
                " ORDER BY server, instance_name")],
            [tuple(r) for r in await conn.fetch(
                f"SELECT server, desired, observed FROM {own}.pass_counts ORDER BY server")],
            [tuple(r) for r in await conn.fetch(
                f"SELECT instance_name, streak FROM {own}.missing_streaks ORDER BY 1")],
            [tuple(r) for r in await conn.fetch(
                f"SELECT group_key FROM {own}.reported_duplicates ORDER BY 1")],
        )


async def _versions(store: Store) -> list[tuple[object, ...]]:
    """Each observation's row version: it changes whenever the row is written."""
    async with store._db.snapshot("reading row versions") as conn:
        return [tuple(r) for r in await conn.fetch(
            f"SELECT server, instance_name, xmin::text FROM {store._db.names.own}.observations"
            " ORDER BY server, instance_name")]


def _entry(rng: random.Random, key: tuple[str, str]) -> InstanceMemory:
    intent = rng.random() < 0.3
    return InstanceMemory(
        server=key[0], instance_name=key[1], first_seen=T0,
        orphan_since=T0 + timedelta(seconds=rng.randint(0, 3)) if rng.random() < 0.5 else None,
        orphan_streak=rng.randint(0, 3), last_live=rng.choice(tuple(LiveState)),
        not_connected_reason=rng.choice((None, "logged_out")),
        delete_requested_at=T0 if intent else None,
        delete_event_id=uuid.uuid4() if intent else None,
        delete_attempts=rng.randint(0, 2), instance_id=rng.choice((None, "id-1", "id-2")))


def _next(rng: random.Random, memory: Memory) -> Memory:
    """A pass's next memory: mostly the very entries it loaded, some copied, changed, gone or
    new; the counts, streaks and duplicate groups now and then."""
    instances: dict[tuple[str, str], InstanceMemory] = {}
    for key in KEYS:
        before, roll = memory.instances.get(key), rng.random()
        if before is not None and roll < 0.6:
            instances[key] = before
        elif before is not None and roll < 0.7:
            instances[key] = replace(before)
        elif roll < 0.85:
            instances[key] = _entry(rng, key)
    counts = dict(memory.last_counts)
    for server in rng.sample(SERVERS, rng.randint(0, 2)):
        if rng.random() < 0.3:
            counts.pop(server, None)
        else:
            counts[server] = PassCounts(rng.randint(0, 9), rng.randint(0, 9))
    streaks = dict(memory.missing_streaks)
    for name in rng.sample(NAMES, rng.randint(0, 2)):
        if rng.random() < 0.3:
            streaks.pop(name, None)
        else:
            streaks[name] = rng.randint(1, 3)
    duplicates = memory.reported_duplicates ^ frozenset(rng.sample(GROUPS, rng.randint(0, 1)))
    return Memory(instances=instances, last_counts=counts, missing_streaks=streaks,
                  reported_duplicates=duplicates)


async def _decide(rng: random.Random, stores: list[tuple[Store, Tokens]], loaded: Memory,
                  confirmed: set[uuid.UUID]) -> None:
    """One decision landing while a pass runs, written alike by both stores: a delete's intent,
    its failure or its confirmation (of an intent this pass loaded, or a new one), a hint's
    observation, a duplicate group reported."""
    intents = [(m.server, m.instance_name, m.delete_event_id)
               for m in loaded.instances.values()
               if m.delete_event_id is not None and m.delete_event_id not in confirmed]
    kind = rng.choice(("begin", "failure", "confirm", "confirm_loaded", "hint", "flag"))
    if kind == "confirm_loaded" and intents:
        server, name, event_id = rng.choice(intents)
    else:
        server, name = rng.choice(KEYS)
        event_id = uuid.uuid4()
    entry = replace(_entry(rng, (server, name)), delete_requested_at=T0,
                    delete_event_id=event_id)
    delete = Delete(server=server, instance_name=name, reason="orphan", event_id=event_id)
    removed = build_event(EventType.REMOVED, instance_name=name, organization_id=None,
                          server=server, reason="orphan", occurred_at=T0, event_id=event_id)
    flag = Flag(server=server, instance_name=name, reason="duplicate_number",
                group_key=rng.choice(GROUPS))
    reported = build_event(EventType.DUPLICATE, instance_name=name, organization_id=None,
                           server=server, reason="duplicate_number", occurred_at=T0)
    outcomes = []
    for store, tokens in stores:
        lease = tokens[server]
        if kind == "begin":
            await store.decisions.begin_delete(entry, lease=lease)
        elif kind == "failure":
            await store.decisions.record_delete_failure(delete, entry, "timeout", lease=lease)
        elif kind == "hint":
            await store.memory.save_instances([entry], lease=lease)
        elif kind == "flag":
            outcomes.append(await store.decisions.record_flag(flag, reported, lease=lease))
        else:
            if kind == "confirm" or not intents:
                await store.decisions.begin_delete(entry, lease=lease)
            confirmed.add(event_id)
            outcomes.append(await store.decisions.confirm_removal(delete, removed, lease=lease))
    assert len(set(outcomes)) <= 1, "both stores held the same rows"


@pytest.mark.parametrize("seed", range(3))
async def test_saves_against_a_baseline_leave_what_replacing_leaves(
    store: Store, twin: Store, seed: int
) -> None:
    rng = random.Random(seed)
    stores = [(store, await _leases(store)), (twin, await _leases(twin))]
    confirmed: set[uuid.UUID] = set()
    for _ in range(25):
        baseline = await store.memory.load()
        assert baseline == await twin.memory.load()
        for _ in range(rng.randint(0, 3)):
            await _decide(rng, stores, baseline, confirmed)
        new = _next(rng, baseline)
        servers = rng.sample(SERVERS, rng.randint(0, 3))
        fleet = rng.random() < 0.7
        keep = set(rng.sample(KEYS, rng.randint(0, 2)))
        for s, tokens in stores:
            await s.memory.save(new, servers=servers, leases={k: tokens[k] for k in servers},
                                fleet=fleet, keep=keep,
                                baseline=baseline if s is store else None)

        assert await _tables(store) == await _tables(twin)


async def test_a_save_of_what_was_loaded_rewrites_no_row(store: Store) -> None:
    rng = random.Random(1)
    await store.memory.save(_next(rng, Memory()), servers=SERVERS)
    baseline = await store.memory.load()
    before = await _versions(store)
    copied = replace(baseline, instances={k: replace(m) for k, m in baseline.instances.items()})

    await store.memory.save(copied, servers=SERVERS, baseline=baseline)

    assert await _versions(store) == before
    assert await store.memory.load() == baseline


async def test_a_load_or_save_in_between_makes_the_save_replace(
    store: Store, twin: Store
) -> None:
    """The writes noted since a load are forgotten by the next one: a save against the earlier
    baseline cannot trust it, nor a second save against one baseline."""
    rng = random.Random(2)
    stores = [(store, await _leases(store)), (twin, await _leases(twin))]
    first = _next(rng, Memory())
    for s, tokens in stores:
        await s.memory.save(first, servers=SERVERS, leases=tokens)
    baseline = await store.memory.load()
    for _ in range(4):
        await _decide(rng, stores, baseline, set())
    await store.memory.load()
    new = _next(rng, baseline)
    for s, tokens in stores:
        await s.memory.save(new, servers=SERVERS, leases=tokens,
                            baseline=baseline if s is store else None)
    assert await _tables(store) == await _tables(twin)

    again = _next(rng, baseline)
    for s, tokens in stores:
        await s.memory.save(again, servers=SERVERS, leases=tokens,
                            baseline=baseline if s is store else None)
    assert await _tables(store) == await _tables(twin)


async def test_an_unchanged_row_loads_as_the_same_entry(store: Store) -> None:
    a, b = (InstanceMemory(server="br-1", instance_name=n, first_seen=T0)
            for n in ("clinic-a", "clinic-b"))
    await store.memory.save(Memory(instances={("br-1", "clinic-a"): a,
                                              ("br-1", "clinic-b"): b}), servers=["br-1"])
    first = await store.memory.load()
    changed = replace(b, orphan_streak=1)
    await store.memory.save(Memory(instances={("br-1", "clinic-a"): a,
                                              ("br-1", "clinic-b"): changed}), servers=["br-1"])

    second = await store.memory.load()

    assert second.instances[("br-1", "clinic-a")] is first.instances[("br-1", "clinic-a")]
    assert second.instances[("br-1", "clinic-b")] == changed


async def test_each_read_decides_changed_rows_and_logs_invalid_ones(
    store: Store, app: App
) -> None:
    kept = await app.insert(instance_name="clinic-a")
    renamed = await app.insert(instance_name="clinic-b")
    broken = await app.insert(config={"instance_name": ""})
    with capture_logs() as logs:
        first = await store.desired.read()
        await app.conn.execute(
            f"UPDATE {app.table} SET config = '{{\"instance_name\": \"clinic-c\"}}'::jsonb"
            " WHERE id = $1", renamed)
        second = await store.desired.read()

    assert [(d.id, d.instance_name) for d in first.instances] == sorted(
        [(kept, "clinic-a"), (renamed, "clinic-b")])
    assert [(d.id, d.instance_name) for d in second.instances] == sorted(
        [(kept, "clinic-a"), (renamed, "clinic-c")])
    assert first.invalid_rows == second.invalid_rows == 1
    assert [log["row_id"] for log in logs
            if log["event"] == "invalid_integration_row"] == [str(broken)] * 2


def _inventory(*names: str) -> ServerInventory:
    return ServerInventory(server="br-1", api_line="v2", version="2.3.0", client_name="c1",
                           instances=tuple(
                               ObservedInstance(server="br-1", name=n, stored_status="open",
                                                live=LiveState.OPEN, owner_jid=None,
                                                number="5511999990000", created_at=None,
                                                disconnect=None) for n in names))


async def _snapshot(store: Store) -> tuple[datetime, int, Any]:
    async with store._db.snapshot("reading a snapshot") as conn:
        row = await conn.fetchrow(
            f"SELECT taken_at, epoch, instances FROM {store._db.names.own}.snapshots"
            " WHERE server = 'br-1'")
    assert row is not None
    return row["taken_at"], row["epoch"], row["instances"]


async def _overwrite_instances(store: Store, instances: object) -> None:
    """Another hand in the row, to see what a save writes."""
    async with store._db.transaction("tampering") as conn:
        await conn.execute(f"UPDATE {store._db.names.own}.snapshots SET instances = $1"
                           " WHERE server = 'br-1'", instances)


async def test_an_unchanged_snapshot_only_moves_its_time(store: Store) -> None:
    lease = await store.leases.acquire("br-1", "replica-a")
    assert lease is not None
    await store.snapshots.save(_inventory("clinic-a"), lease=lease)
    taken, epoch, _ = await _snapshot(store)
    await _overwrite_instances(store, [["clinic-z", None, "open"]])

    await store.snapshots.save(_inventory("clinic-a"), lease=lease)

    later, same_epoch, instances = await _snapshot(store)
    assert later > taken
    assert (same_epoch, instances) == (epoch, [["clinic-z", None, "open"]]), "only its time"


async def test_a_changed_snapshot_or_a_new_term_writes_it_whole(store: Store) -> None:
    lease = await store.leases.acquire("br-1", "replica-a")
    assert lease is not None
    await store.snapshots.save(_inventory("clinic-a"), lease=lease)

    await store.snapshots.save(_inventory("clinic-a", "clinic-b"), lease=lease)
    assert (await _snapshot(store))[2] == [["clinic-a", "5511999990000", "open"],
                                           ["clinic-b", "5511999990000", "open"]]

    await _overwrite_instances(store, [])
    newer = await store.leases.acquire("br-1", "replica-b", take_over=True)
    assert newer is not None
    await store.snapshots.save(_inventory("clinic-a", "clinic-b"), lease=newer)
    _, epoch, instances = await _snapshot(store)
    assert (epoch, len(instances)) == (newer.epoch, 2)


async def test_an_unchanged_snapshot_whose_row_is_gone_is_written_again(store: Store) -> None:
    lease = await store.leases.acquire("br-1", "replica-a")
    assert lease is not None
    await store.snapshots.save(_inventory("clinic-a"), lease=lease)
    async with store._db.transaction("forgetting") as conn:
        await conn.execute(f"DELETE FROM {store._db.names.own}.snapshots")

    await store.snapshots.save(_inventory("clinic-a"), lease=lease)

    assert (await _snapshot(store))[2] == [["clinic-a", "5511999990000", "open"]]
