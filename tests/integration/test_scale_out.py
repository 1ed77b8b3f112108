"""Scale out (SPEC 7): each server read once per interval by its leader, the work shared by
heartbeat, and what spans servers decided once, from fresh snapshots only."""

from __future__ import annotations

from pathlib import Path

from reconciler.leadership import Leadership
from reconciler.observability import Metrics
from reconciler.simulator import Simulator
from reconciler.store import Store
from tests.conftest import DbNames
from tests.integration.conftest import Env, EventTap, clinic_name
from tests.integration.test_servers import name_on_both, split, two_servers, write_config


def listings(sim: Simulator) -> int:
    return sum(1 for m, path in sim.requests if m == "GET" and path.startswith(
        "/instance/fetchInstances"))


async def test_each_server_is_listed_only_by_its_leader(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        tmp_path: Path) -> None:
    async with two_servers(("evo-a", "evo-b")) as (a, b):
        env = Env(database_url, redis_url, db_names, channel, a)
        async with split(env, write_config(tmp_path, a, b)) as (first, second):
            for _ in range(3):
                await first.run_pass()
                await second.run_pass()
        assert (listings(a), listings(b)) == (3, 3), "one listing per server per interval"


async def test_missing_is_decided_by_the_first_servers_leader_from_fresh_snapshots_only(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        tmp_path: Path) -> None:
    async with two_servers(("evo-a", "evo-b")) as (a, b):
        env = Env(database_url, redis_url, db_names, channel, a)
        keeper = clinic_name()
        b.add(keeper, state="open", owner_jid="5511900000001@s.whatsapp.net")
        await env.add_row(keeper)
        nowhere = await env.add_row(clinic_name())
        async with split(env, write_config(tmp_path, a, b)) as (first, second):
            for _ in range(2):
                await first.run_pass()
            assert (await env.row(nowhere))["status"] == "connected", (
                "br-2 was never read by its leader: missing waits")
            await second.run_pass()
            assert (await env.row(nowhere))["status"] == "connected", "not br-2's decision"
            await env.sql(f'UPDATE "{env.names.schema}".snapshots'
                          " SET taken_at = now() - interval '1 hour'")
            await first.run_pass()
            assert (await env.row(nowhere))["status"] == "connected", "a stale snapshot waits"
            await second.run_pass()
            await first.run_pass()
            row = await env.row(nowhere)
            assert (row["status"], row["disconnect_reason"]) == ("disconnected",
                                                                 "instance_missing")
            keeper_row = next(r for r in await env.all_rows() if keeper in str(r["config"]))
            assert keeper_row["status"] == "connected", "listed on br-2's snapshot: not missing"


async def test_a_name_on_two_servers_is_flagged_once_whoever_leads(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        tmp_path: Path, events: EventTap) -> None:
    async with two_servers(("evo-a", "evo-b")) as (a, b):
        env = Env(database_url, redis_url, db_names, channel, a)
        name = await name_on_both(env, a, b)
        async with split(env, write_config(tmp_path, a, b)) as (first, second):
            for _ in range(3):
                await second.run_pass()
                await first.run_pass()
        published = await events.drain(expect=1)
        assert [(e["type"], e["reason"]) for e in published] == [
            ("instance.duplicate", "duplicate_name")]
        assert name in a.names() and name in b.names()


async def test_replicas_share_the_servers_and_take_over_a_dead_ones(
        database_url: str, db_names: DbNames) -> None:
    servers = [f"br-{i}" for i in range(1, 8)]
    store = await Store.connect(database_url, integrations_table=db_names.integrations_table,
                                schema=db_names.schema)
    try:
        await store.migrate()
        replicas = [Leadership(store.leases, servers, Metrics(servers), holder=f"r{i}")
                    for i in range(3)]

        async def settle() -> None:
            for _ in range(3):
                for replica in replicas:
                    await replica.refresh()
                    await replica.hand_back_surplus()

        await settle()
        assert sorted(len(r.held) for r in replicas) == [2, 2, 3], "7 servers over 3 replicas"
        led = [s for r in replicas for s in r.held]
        assert sorted(led) == servers, "every server led, by one replica"

        replicas.append(Leadership(store.leases, servers, Metrics(servers), holder="r3"))
        await settle()
        assert max(len(r.held) for r in replicas) == 2, "a fourth replica joined: ceil(7/4)"
        assert sorted(s for r in replicas for s in r.held) == servers

        dead = replicas.pop(0)
        await store.leases.leave(dead.holder)
        await env_sql_expire(database_url, db_names.schema, dead.holder)
        await settle()
        assert sorted(s for r in replicas for s in r.held) == servers, "the dead one's taken"
        assert max(len(r.held) for r in replicas) == 3, "ceil(7/3)"
    finally:
        await store.close()


async def env_sql_expire(database_url: str, schema: str, holder: str) -> None:
    """What 15 s without renewal does to a killed replica's leases."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'UPDATE "{schema}".leases SET expires_at = now() WHERE holder = $1',
                           holder)
    finally:
        await conn.close()
