"""Issue 8's deletion rules end to end: the incident converges on a small server, a row that could
not be read keeps its instance, and the re-check uses the planner's name rule."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import anyio
import pytest

from reconciler.simulator import Simulator
from tests.conftest import DbNames
from tests.integration.conftest import (
    API_KEY,
    Env,
    EventTap,
    clinic_name,
    controller_for,
    keeper_and_orphan,
)
from tests.integration.test_incident import seed_incident

ENFORCE = {"RECONCILER_MODE": "enforce", "RECONCILER_ORPHAN_CONFIRMATIONS": "1"}


def deletes_sent(env: Env) -> list[str]:
    return [p for m, p in env.sim.requests if m == "DELETE" and "/instance/delete/" in p]


async def test_the_incident_converges_on_a_small_server_with_the_default_fraction(
        env: Env, events: EventTap) -> None:
    """Two managed instances, the orphan and the clinic's new one: 1 of 2 is within 25 %."""
    _, orphan, replacement, _ = await seed_incident(env)
    code, out = env.cli_json("once", RECONCILER_MAX_DELETION_FRACTION="0.25", **ENFORCE)
    assert code == 0, out
    assert [(a["instance_name"], a["outcome"], a["guard"]) for a in out["actions"]] == [
        (orphan, "ok", None)]
    assert env.sim.names() == [replacement]
    [event] = await events.drain(expect=1)
    assert (event["type"], event["instance_name"]) == ("instance.removed", orphan)


async def test_two_orphans_on_a_small_server_still_wait_for_the_operator(env: Env) -> None:
    _, orphan, replacement, _ = await seed_incident(env)
    other = clinic_name(age=timedelta(days=3))
    env.sim.add(other, state="close")
    code, out = env.cli_json("once", RECONCILER_MAX_DELETION_FRACTION="0.25", **ENFORCE)
    assert code == 3, out
    assert {(a["outcome"], a["guard"]) for a in out["actions"]} == {("blocked", "max_fraction")}
    assert sorted(env.sim.names()) == sorted([orphan, replacement, other])


UNREADABLE: dict[str, Any] = {
    "list": lambda name: {"instance_name": [name]},
    "object": lambda name: {"instance_name": {"name": name}},
    "double-encoded": lambda name: {"instance_name": json.dumps(name)},
    "config a JSON string": lambda name: json.dumps({"instance_name": name}),
}


async def test_an_instance_named_only_by_an_unreadable_row_is_never_deleted(env: Env) -> None:
    keeper = clinic_name(age=timedelta(days=30))
    env.sim.add(keeper, state="open", owner_jid="5511900000001@s.whatsapp.net")
    await env.add_row(keeper)
    orphan = clinic_name(age=timedelta(days=3))
    env.sim.add(orphan, state="close")
    claimed = {}
    for kind, config in UNREADABLE.items():
        name = clinic_name(age=timedelta(days=3))
        env.sim.add(name, state="open")
        await env.add_row(None, config=config(name))
        claimed[name] = kind

    code, out = env.cli_json("once", "--allow-mass-deletion", **ENFORCE)

    assert code == 0, out
    assert out["invalid_rows"] == len(UNREADABLE)
    outcomes = {a["instance_name"]: (a["outcome"], a["guard"]) for a in out["actions"]}
    assert outcomes == {orphan: ("ok", None), **dict.fromkeys(claimed, ("blocked", "invalid_row"))}
    assert set(claimed) <= set(env.sim.names()), "not lifted by --allow-mass-deletion"
    assert deletes_sent(env) == [f"/instance/delete/{orphan}"]
    audited = {(r["instance_name"], r["action"], r["outcome"], r["guard"])
               for r in await env.audit()}
    for name in claimed:
        assert (name, "delete", "blocked", "invalid_row") in audited, claimed[name]


@pytest.mark.parametrize("config", [
    pytest.param(lambda name: {"instance_name": f"{name} "}, id="trailing space"),
    pytest.param(lambda name: {"instance_name": f"\ufeff{name}"}, id="byte order mark"),
    pytest.param(lambda name: {"instance_name": [name]}, id="unreadable row"),
])
async def test_a_row_inserted_mid_pass_stops_the_delete(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        events: EventTap, config: Any) -> None:
    """Inserted after the desired state was read, before the delete: only the re-check sees it,
    and it must decide with the planner's name rule (SPEC 3, 4.3 rule 5)."""
    async with Simulator(api_key=API_KEY) as sim:
        env = Env(database_url, redis_url, db_names, channel, sim)
        _, orphan = await keeper_and_orphan(env, sim)
        sim.fault("fetchInstances", delay=0.5, times=1)
        async with controller_for(env, sim) as controller:

            async def insert_the_row_while_the_server_is_read() -> None:
                with anyio.fail_after(10):
                    while ("GET", "/instance/fetchInstances") not in sim.requests:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await env.add_row(None, config=config(orphan))

            async with anyio.create_task_group() as tg:
                tg.start_soon(insert_the_row_while_the_server_is_read)
                result = await controller.run_pass()

            assert not result.failed, result.errors
            assert [(a.instance_name, o.value, a.blocked_by and a.blocked_by.value)
                    for a, o, _ in result.report.outcomes] == [(orphan, "blocked", "recheck")]
            assert orphan in sim.names()
            assert not any(m == "DELETE" for m, _ in sim.requests), "no logout, no delete"
            assert await events.drain(timeout=0.3) == []
