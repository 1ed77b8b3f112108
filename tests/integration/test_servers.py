"""Several servers, several replicas: each server read on its own, acted on by its leader only,
judged together for what spans servers (SPEC sections 3 and 7)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path

from reconciler.controller import Controller
from reconciler.settings import load_settings
from reconciler.simulator import Simulator
from reconciler.wiring import open_controller
from tests.conftest import DbNames
from tests.integration.conftest import API_KEY, Env, EventTap, clinic_name


@asynccontextmanager
async def two_servers(client_names: tuple[str, str]) -> AsyncIterator[tuple[Simulator, Simulator]]:
    async with Simulator(api_key=API_KEY, client_name=client_names[0]) as a, \
            Simulator(api_key=API_KEY, client_name=client_names[1]) as b:
        yield a, b


def write_config(tmp_path: Path, a: Simulator, b: Simulator) -> str:
    (tmp_path / "key").write_text(API_KEY + "\n")
    config = tmp_path / "reconciler.toml"
    config.write_text(
        'mode = "enforce"\norphan_confirmations = 1\norphan_grace_seconds = 0\n'
        "max_deletion_fraction = 1.0\n"
        f'[[servers]]\nname = "br-1"\nurl = "{a.url}"\napi_key_file = "key"\n'
        f'[[servers]]\nname = "br-2"\nurl = "{b.url}"\napi_key_file = "key"\n')
    return str(config)


async def once(env: Env, config: str) -> subprocess.CompletedProcess[str]:
    """`reconciler once` in a thread: the simulators serve from this test's event loop."""
    return await asyncio.to_thread(
        env.cli, "once", "--output", "json", RECONCILER_CONFIG=config,
        RECONCILER_EVOLUTION_URL="", RECONCILER_EVOLUTION_API_KEY="")


@asynccontextmanager
async def split(env: Env, config: str) -> AsyncIterator[tuple[Controller, Controller]]:
    """Two replicas, one leading br-1 (the fleet's decisions are its own), one leading br-2."""
    settings = load_settings(environ(env, config))
    async with AsyncExitStack() as stack:
        replicas = []
        for server in ("br-1", "br-2"):
            controller = await stack.enter_async_context(open_controller(settings))
            token = await controller.store.leases.acquire(server, controller.leadership.holder)
            assert token is not None
            controller.leadership.held[server] = token
            replicas.append(controller)
        yield replicas[0], replicas[1]


async def name_on_both(env: Env, a: Simulator, b: Simulator) -> str:
    """One desired name listed by both servers (live on the first): `duplicate_name`."""
    name = clinic_name()
    a.add(name, state="open", owner_jid="5511900000005@s.whatsapp.net")
    b.add(name, state="close")
    await env.add_row(name)
    return name


def environ(env: Env, config: str) -> dict[str, str]:
    return {k: v for k, v in env.environ(RECONCILER_CONFIG=config).items()
            if k.startswith("RECONCILER_") and k not in (
                "RECONCILER_EVOLUTION_URL", "RECONCILER_EVOLUTION_API_KEY",
                "RECONCILER_ORPHAN_GRACE_SECONDS", "RECONCILER_MAX_DELETION_FRACTION")}


async def test_deletes_go_only_to_the_server_that_lists_the_instance(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        tmp_path: Path) -> None:
    async with two_servers(("evo-a", "evo-b")) as (a, b):
        env = Env(database_url, redis_url, db_names, channel, a)
        keeper_a, keeper_b = clinic_name(), clinic_name()
        a.add(keeper_a, state="open", owner_jid="5511900000001@s.whatsapp.net")
        b.add(keeper_b, state="open", owner_jid="5511900000002@s.whatsapp.net")
        await env.add_row(keeper_a)
        await env.add_row(keeper_b)
        orphan = clinic_name(age=timedelta(days=2))
        b.add(orphan, state="close")
        proc = await once(env, write_config(tmp_path, a, b))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert orphan not in b.names()
        assert not [p for m, p in a.requests if m == "DELETE"]
        assert ("DELETE", f"/instance/delete/{orphan}") in b.requests


async def test_two_servers_with_one_client_name_are_refused(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        tmp_path: Path) -> None:
    async with two_servers(("same", "same")) as (a, b):
        env = Env(database_url, redis_url, db_names, channel, a)
        orphan = clinic_name(age=timedelta(days=2))
        a.add(orphan, state="close")
        proc = await once(env, write_config(tmp_path, a, b))
        assert proc.returncode == 1
        assert "clientName" in proc.stdout
        assert orphan in a.names()
        assert not [m for m, _ in a.requests + b.requests if m == "DELETE"]


async def test_split_leadership_acts_per_server_and_judges_across_all(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        tmp_path: Path) -> None:
    async with two_servers(("evo-a", "evo-b")) as (a, b), AsyncExitStack() as stack:
        env = Env(database_url, redis_url, db_names, channel, a)
        lives_on_b = clinic_name()
        b.add(lives_on_b, state="open", owner_jid="5511900000003@s.whatsapp.net")
        row = await env.add_row(lives_on_b, status="connected")
        keeper_a = clinic_name()
        a.add(keeper_a, state="open", owner_jid="5511900000004@s.whatsapp.net")
        await env.add_row(keeper_a)
        orphan_b = clinic_name(age=timedelta(days=2))
        b.add(orphan_b, state="close")
        leader_a, leader_b = await stack.enter_async_context(
            split(env, write_config(tmp_path, a, b)))

        for _ in range(3):
            result = await leader_a.run_pass()
            assert not result.failed, result.errors
            assert result.report.outcomes == []
        assert (await env.row(row))["status"] == "connected"
        assert orphan_b in b.names()

        result = await leader_b.run_pass()
        assert [(a.instance_name, o.value) for a, o, _ in result.report.outcomes] == [
            (orphan_b, "ok")]
        assert orphan_b not in b.names()


async def test_one_name_on_two_servers_is_flagged_not_deleted(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        tmp_path: Path, events: EventTap) -> None:
    async with two_servers(("evo-a", "evo-b")) as (a, b):
        env = Env(database_url, redis_url, db_names, channel, a)
        name = await name_on_both(env, a, b)
        proc = await once(env, write_config(tmp_path, a, b))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = json.loads(proc.stdout)
        assert {(d["server"], d["kind"]) for d in out["drift"] if d["instance_name"] == name} \
            == {("br-1", "duplicate_name"), ("br-2", "duplicate_name")}
        assert [(e["type"], e["reason"]) for e in await events.drain(expect=1)] == [
            ("instance.duplicate", "duplicate_name")]
        assert name in a.names() and name in b.names()
