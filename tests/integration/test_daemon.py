"""`reconciler run`: probes, metrics, the deletion trigger and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest

from reconciler import planner
from reconciler.loop import run_forever
from reconciler.simulator import Simulator
from tests.conftest import DbNames
from tests.integration.conftest import API_KEY, Env, EventTap, clinic_name, controller_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_daemon_serves_probes_converges_on_notify_and_stops_cleanly(
        env: Env, events: EventTap) -> None:
    name = clinic_name(age=timedelta(minutes=1))
    env.sim.add(name, state="open", owner_jid="5511900001111@s.whatsapp.net")
    await env.add_row(name, status="connected")
    keeper = clinic_name(age=timedelta(days=5))
    env.sim.add(keeper, state="open", owner_jid="5511900002222@s.whatsapp.net")
    await env.add_row(keeper, status="connected")
    assert env.cli("install-trigger").returncode == 0
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run"],
        env=env.environ(RECONCILER_MODE="enforce", RECONCILER_INTERVAL_SECONDS="60",
                        RECONCILER_HTTP_ADDR=f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:
            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, what="/readyz")
            assert (await http.get("/healthz")).status_code == 200
            metrics = (await http.get("/metrics")).text
            assert 'evolution_reconciler_leader{server="default"} 1.0' in metrics
            assert 'evolution_reconciler_reconcile_total{result="success",server="default"}' \
                in metrics
            assert 'evolution_reconciler_build_info{version=' in metrics

            await env.sql(f"DELETE FROM {env.names.integrations_table}"
                          " WHERE config->>'instance_name' = $1", name)

            async def gone() -> bool:
                return name not in env.sim.names()

            await wait_for(gone, timeout=15, what="the released instance to be deleted")
            [event] = await events.drain(expect=1, timeout=10)
            assert (event["type"], event["instance_name"], event["reason"]) == (
                "instance.removed", name, "orphan")
            assert keeper in env.sim.names()
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, stderr[-2000:]


async def test_an_operators_once_acts_while_the_daemon_leads(env: Env) -> None:
    keeper = clinic_name(age=timedelta(days=5))
    env.sim.add(keeper, state="open", owner_jid="5511900002222@s.whatsapp.net")
    await env.add_row(keeper, status="connected")
    orphan = clinic_name(age=timedelta(days=5))
    env.sim.add(orphan, state="close")
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run"],
        env=env.environ(RECONCILER_INTERVAL_SECONDS="1", RECONCILER_HTTP_ADDR=f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
            async def leads() -> bool:
                try:
                    text = (await http.get("/metrics")).text
                except httpx.TransportError:
                    return False
                return 'evolution_reconciler_leader{server="default"} 1.0' in text

            await wait_for(leads, what="the daemon to lead")
            holder_query = (f'SELECT holder FROM "{env.names.schema}".leases'
                            " WHERE server = 'default' AND expires_at > now()")
            daemon_holder = await env.fetchval(holder_query)
            assert daemon_holder
            code, out = await asyncio.to_thread(
                env.cli_json, "once", RECONCILER_MODE="enforce",
                RECONCILER_ORPHAN_CONFIRMATIONS="1")
            assert code == 0, out
            assert [(a["instance_name"], a["outcome"]) for a in out["actions"]] == [
                (orphan, "ok")]
            assert orphan not in env.sim.names()
            async def daemon_leads_again() -> bool:
                return bool(await env.fetchval(holder_query) == daemon_holder)

            await wait_for(daemon_leads_again, timeout=30, what="the daemon to lead again")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, stderr[-2000:]


async def test_a_bug_in_one_pass_does_not_stop_the_loop(
        database_url: str, redis_url: str, db_names: DbNames, channel: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner is made to fail once (a bug cannot be made real); the next pass runs."""
    async with Simulator(api_key=API_KEY) as sim:
        env = Env(database_url, redis_url, db_names, channel, sim)
        calls = 0
        real_plan = planner.plan_and_population

        def fails_once(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug")
            return real_plan(*args, **kwargs)

        monkeypatch.setattr(planner, "plan_and_population", fails_once)
        async with controller_for(env, sim, RECONCILER_INTERVAL_SECONDS="0.1") as controller:
            metrics = controller.recorder.metrics
            success = metrics.reconcile_total.labels(server="default", result="success")
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_forever, controller, stop)

                async def passed() -> bool:
                    return success._value.get() >= 1

                await wait_for(passed, what="a pass after the failing one")
                stop.set()
            errors = metrics.reconcile_errors_total.labels(server="default", stage="apply")
            assert errors._value.get() == 1
            assert calls >= 2
