"""The incident converges against every Evolution line the simulator speaks, and no
`instance.removed` is published for a deletion that did not really happen (issue 3)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from reconciler.simulator import VERSIONS, Simulator
from tests.conftest import DbNames
from tests.integration.conftest import API_KEY, Env, EventTap, clinic_name, controller_for

PHONE = "5511988887777@s.whatsapp.net"


@pytest.mark.parametrize("version", VERSIONS)
async def test_incident_converges_on_every_version(
        version: str, database_url: str, redis_url: str, db_names: DbNames, channel: str,
        events: EventTap) -> None:
    async with Simulator(api_key=API_KEY, version=version) as sim:
        env = Env(database_url, redis_url, db_names, channel, sim)
        org = uuid.uuid4()
        orphan = clinic_name(org, age=timedelta(days=3))
        replacement = clinic_name(org, age=timedelta(hours=1))
        sim.add(orphan, state="open", owner_jid=PHONE)
        sim.add(replacement, state="open", owner_jid=PHONE)
        await env.add_row(replacement, org=org)
        async with controller_for(env, sim) as controller:
            result = await controller.run_pass()
            assert not result.failed, result.errors
            assert sim.names() == [replacement]
            [event] = await events.drain(expect=1)
            assert (event["type"], event["instance_name"]) == ("instance.removed", orphan)
            again = await controller.run_pass()
            assert again.report.outcomes == []


async def test_asynchronous_cleanup_publishes_only_once_the_instance_is_gone(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        events: EventTap) -> None:
    """v2 answers 200 before its cleanup: the event waits for a listing without the instance."""
    async with Simulator(api_key=API_KEY, version="2.3.6", delete_delay=30.0) as sim:
        env = Env(database_url, redis_url, db_names, channel, sim)
        keeper = clinic_name()
        sim.add(keeper, state="open", owner_jid=PHONE)
        await env.add_row(keeper)
        orphan = clinic_name(age=timedelta(days=3))
        sim.add(orphan, state="close")
        async with controller_for(env, sim) as controller:
            controller.verify_timeout = 0.3
            first = await controller.run_pass()
            assert [(a.instance_name, o.value, e) for a, o, e in first.report.outcomes] == [
                (orphan, "failed", "deletion answered but not verified yet")]
            assert await events.drain(timeout=0.3) == []

            sim.remove(orphan)  # Evolution's cleanup finished
            second = await controller.run_pass()
            assert [(a.instance_name, a.already_gone, o.value)
                    for a, o, _ in second.report.outcomes] == [(orphan, True, "ok")]
            [event] = await events.drain(expect=1)
            assert (event["type"], event["instance_name"]) == ("instance.removed", orphan)
            assert (await controller.run_pass()).report.outcomes == []


async def test_a_failed_delete_publishes_nothing_and_is_retried_later(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        events: EventTap) -> None:
    """2.3.7 awaits the logout inside delete: a dead socket makes both fail."""
    async with Simulator(api_key=API_KEY, version="2.3.7") as sim:
        env = Env(database_url, redis_url, db_names, channel, sim)
        keeper = clinic_name()
        sim.add(keeper, state="open", owner_jid=PHONE)
        await env.add_row(keeper)
        orphan = clinic_name(age=timedelta(days=3))
        sim.add(orphan, state="open", owner_jid="5511911112222@s.whatsapp.net")
        instance = sim.get(orphan)
        assert instance is not None
        instance.socket_dead = True
        async with controller_for(env, sim) as controller:
            first = await controller.run_pass()
            assert first.failed
            assert [(a.instance_name, o.value) for a, o, _ in first.report.outcomes] == [
                (orphan, "failed")]
            assert orphan in sim.names()
            assert await events.drain(timeout=0.3) == []
            backing_off = await controller.run_pass()
            assert backing_off.report.outcomes == []
            assert orphan in sim.names()
