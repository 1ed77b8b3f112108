"""A failure in the middle of a pass leaves the database and the servers consistent, and the
event owed for what did happen is published by a later pass."""

from __future__ import annotations

import asyncio

import anyio

from reconciler.simulator import Simulator
from tests.conftest import DbNames
from tests.integration.conftest import (
    API_KEY,
    Env,
    EventTap,
    controller_for,
    keeper_and_orphan,
)


async def test_database_lost_between_delete_and_audit(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        events: EventTap) -> None:
    async with Simulator(api_key=API_KEY) as sim:
        env = Env(database_url, redis_url, db_names, channel, sim)
        keeper, orphan = await keeper_and_orphan(env, sim)
        sim.fault("delete", delay=0.5, times=1)
        async with controller_for(env, sim) as controller:

            own, hidden = db_names.schema, f"{db_names.schema}_away"

            async def break_the_database_during_the_delete() -> None:
                """Every write after the Evolution call fails, as with a database gone away."""
                with anyio.fail_after(10):
                    while ("DELETE", f"/instance/delete/{orphan}") not in sim.requests:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await env.sql(f'ALTER SCHEMA "{own}" RENAME TO "{hidden}"')

            async with anyio.create_task_group() as tg:
                tg.start_soon(break_the_database_during_the_delete)
                first = await controller.run_pass()
            await env.sql(f'ALTER SCHEMA "{hidden}" RENAME TO "{own}"')
            assert "apply" in [e.stage for e in first.errors], first.errors
            assert orphan not in sim.names()
            assert keeper in sim.names()
            assert await events.drain(timeout=0.3) == []

            second = await controller.run_pass()
            assert not second.failed, second.errors
            assert [(a.instance_name, a.already_gone, o.value)
                    for a, o, _ in second.report.outcomes] == [(orphan, True, "ok")]
            [event] = await events.drain(expect=1)
            assert (event["type"], event["instance_name"]) == ("instance.removed", orphan)
            assert (await controller.run_pass()).report.outcomes == []
