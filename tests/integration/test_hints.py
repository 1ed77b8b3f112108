"""Hints end to end (SPEC 4.5, 4.6): the simulator's webhooks over loopback HTTP, the triggers'
NOTIFYs, a daemon loop at a 30 s interval, so that whatever converges in seconds came from a
hint and its targeted reconcile, not from a pass."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx

from reconciler.controller import Controller
from reconciler.loop import run_forever
from reconciler.simulator import Simulator
from reconciler.simulator.state import device_removed_object
from reconciler.wiring import serving
from tests.integration.conftest import API_KEY, Env, EventTap, clinic_name, controller_for

TOKEN = "hook-token-3b9f"


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                   what: str = "condition") -> None:
    deadline = anyio.current_time() + timeout
    while not await predicate():
        assert anyio.current_time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def value(controller: Controller, metric: str, **labels: str) -> float:
    sample = controller.recorder.metrics.registry.get_sample_value(
        "evolution_reconciler_" + metric, labels)
    return sample or 0.0


def evolution_requests(controller: Controller) -> float:
    registry = controller.recorder.metrics.registry
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == "evolution_reconciler_evolution_requests_total")


@asynccontextmanager
async def daemon(env: Env, sim: Simulator, **overrides: str) -> AsyncIterator[
        tuple[Controller, str]]:
    """A running daemon (loop + HTTP) whose first pass is done; yields it and its base URL."""
    port = free_port()
    settings = {"RECONCILER_INTERVAL_SECONDS": "30", "RECONCILER_WEBHOOK_TOKEN": TOKEN,
                "RECONCILER_DISCONNECT_AFTER_SECONDS": "1", **overrides}
    async with controller_for(env, sim, **settings) as controller, \
            serving(controller, "127.0.0.1", port), anyio.create_task_group() as tg:
        stop = anyio.Event()
        tg.start_soon(run_forever, controller, stop)

        async def passed() -> bool:
            return controller.population is not None

        await wait_for(passed, what="the first pass")
        yield controller, f"http://127.0.0.1:{port}"
        stop.set()


async def test_a_terminal_close_by_webhook_is_marked_at_once(env: Env, events: EventTap) -> None:
    name = clinic_name()
    async with Simulator(api_key=API_KEY) as sim:
        sim.add(name, state="open", owner_jid="5511900003333@s.whatsapp.net")
        row = await env.add_row(name)
        async with daemon(env, sim) as (controller, url):
            sim.send_webhooks(f"{url}/webhooks/evolution/default/{TOKEN}", by_events=True)
            before = value(controller, "hint_to_converged_seconds_count")
            sim.set_state(name, "close", code=401,
                          disconnect_object=device_removed_object(datetime.now(UTC)))

            async def marked() -> bool:
                return (await env.row(row))["status"] == "disconnected" and value(
                    controller, "hint_to_converged_seconds_count") > before

            await wait_for(marked, timeout=3, what="the 401 marked by its webhook")
            assert (await env.row(row))["disconnect_reason"] == "device_removed"
            assert value(controller, "hints_total", source="webhook") >= 1
            received = value(controller, "webhooks_received_total", server="default",
                             event="connection.update", result="accepted")
            assert received >= 1
            assert [e["type"] for e in await events.drain(expect=1)] == ["instance.disconnected"]
            assert [e for e, _, _ in sim.webhooks.sent if e] == [  # type: ignore[union-attr]
                "status.instance", "logout.instance", "connection.update"]


async def test_a_deleted_row_and_an_inserted_one_converge_by_their_trigger(
        env: Env, events: EventTap) -> None:
    gone, back = clinic_name(age=timedelta(seconds=5)), clinic_name()
    async with Simulator(api_key=API_KEY) as sim:
        sim.add(gone, state="open", owner_jid="5511900004444@s.whatsapp.net")
        sim.add(back, state="open", owner_jid="5511900005555@s.whatsapp.net")
        row = await env.add_row(gone)
        keeper = clinic_name()
        sim.add(keeper, state="open", owner_jid="5511900004445@s.whatsapp.net")
        await env.add_row(keeper)
        # Orphans wait for five passes: only a tombstone can delete within this test.
        async with daemon(env, sim, RECONCILER_ORPHAN_CONFIRMATIONS="5") as (controller, _):
            await controller.store.desired.install_trigger()
            await env.sql(f"DELETE FROM {env.names.integrations_table} WHERE id = $1", row)

            async def removed() -> bool:
                return gone not in sim.names()

            await wait_for(removed, timeout=5, what="the deleted row's instance removed")
            assert back in sim.names()
            found = await events.drain(expect=1)
            assert [(e["type"], e["instance_name"]) for e in found] == [
                ("instance.removed", gone)]
            pending = await env.add_row(back, status="pending")

            async def connected() -> bool:
                return (await env.row(pending))["status"] == "connected"

            await wait_for(connected, timeout=5, what="the inserted row marked connected")
            assert value(controller, "hints_total", source="tombstone") >= 1
            assert value(controller, "hints_total", source="row") >= 1


async def post(http: httpx.AsyncClient, path: str, body: Any = None, **kw: Any) -> int:
    return (await http.post(path, json=body, **kw)).status_code


async def test_bad_webhooks_are_answered_counted_and_change_nothing(env: Env) -> None:
    name = clinic_name()
    async with Simulator(api_key=API_KEY) as sim:
        sim.add(name, state="open", owner_jid="5511900006666@s.whatsapp.net")
        row = await env.add_row(name)
        async with daemon(env, sim) as (controller, url), httpx.AsyncClient(base_url=url) as http:
            base = f"/webhooks/evolution/default/{TOKEN}"
            close = {"event": "connection.update", "instance": name,
                     "data": {"instance": name, "state": "close", "statusReason": 401}}
            requests = len(sim.requests)
            assert await post(http, "/webhooks/evolution/default/wrong", close) == 401
            assert await post(http, f"/webhooks/evolution/nope/{TOKEN}", close) == 404
            assert await post(http, base, content=b"{not json") == 400
            assert await post(http, base, ["a", "list"]) == 400
            assert await post(http, base, content=b"{" + b" " * (1024 * 1024)) == 413
            assert await post(http, base, {"event": "messages.upsert", "instance": name}) == 200
            assert len(sim.requests) == requests
            assert value(controller, "webhooks_received_total", server="default",
                         event="other", result="invalid") == 3
            assert value(controller, "webhooks_received_total", server="",
                         event="other", result="invalid") == 1
            assert value(controller, "webhooks_received_total", server="default",
                         event="other", result="unauthorized") == 1
            assert value(controller, "webhooks_received_total", server="default",
                         event="other", result="ignored") == 1
            assert value(controller, "hints_total", source="webhook") == 0
            # A v1 body on this v2 server claiming a close the server denies: a hint, and the
            # targeted read finds the instance open, so nothing is marked.
            v1_close = {**close, "data": {**close["data"], "wuid": "5511900006666@s.whatsapp.net",
                                          "profileName": "x"}}
            assert await post(http, base + "/connection-update", v1_close) == 200

            async def reconciled() -> bool:
                return value(controller, "hint_to_converged_seconds_count") >= 1

            await wait_for(reconciled, what="the claim checked")
            assert (await env.row(row))["status"] == "connected"
    async with Simulator(api_key=API_KEY) as sim, \
            daemon(env, sim, RECONCILER_WEBHOOK_TOKEN="") as (controller, url), \
            httpx.AsyncClient(base_url=url) as http:
        assert controller.settings.webhook_token is None
        assert await post(http, f"/webhooks/evolution/default/{TOKEN}", {}) == 403


async def test_a_flood_is_coalesced_and_a_restart_storm_marks_nothing(env: Env) -> None:
    names = [clinic_name() for _ in range(10)]
    async with Simulator(api_key=API_KEY) as sim:
        rows = []
        for i, name in enumerate(names):
            sim.add(name, state="open", owner_jid=f"55119000100{i:02d}@s.whatsapp.net")
            rows.append(await env.add_row(name))
        async with daemon(env, sim) as (controller, url), httpx.AsyncClient(base_url=url) as http:
            before = evolution_requests(controller)
            started = anyio.current_time()
            base = f"/webhooks/evolution/default/{TOKEN}"
            for i in range(1000):
                name = names[i % 10]
                body = {"event": "connection.update", "instance": name,
                        "data": {"instance": name, "state": "open", "statusReason": 200}}
                assert await post(http, base, body) == 200
            elapsed = anyio.current_time() - started

            async def drained() -> bool:
                return controller.targeted is not None and controller.targeted.queue.depth == 0

            await wait_for(drained, what="the queue drained")
            await asyncio.sleep(0.2)  # the last reconcile in flight finishes its two requests
            cost = evolution_requests(controller) - before
            # Two requests per reconcile; at most one per name plus what the rate lets through.
            assert cost <= 2 * (10 + 20 * (elapsed + 1)), (cost, elapsed)
            # A server restart: every session `connecting`, twice, hysteresis long past.
            sim.send_webhooks(f"{url}{base}")
            reconciles = value(controller, "hint_to_converged_seconds_count")
            for _ in range(2):
                for name in names:
                    sim.set_state(name, "connecting")
                await wait_for(drained, what="the storm drained")
                await asyncio.sleep(1.2)
            assert [(await env.row(r))["status"] for r in rows] == ["connected"] * 10
            assert value(controller, "hint_to_converged_seconds_count") >= reconciles + 20


async def test_a_standby_passes_a_webhook_to_the_leader(env: Env) -> None:
    name = clinic_name()
    async with Simulator(api_key=API_KEY) as sim:
        sim.add(name, state="open", owner_jid="5511900007777@s.whatsapp.net")
        row = await env.add_row(name)
        async with daemon(env, sim) as (leader, _):
            port = free_port()
            standby_settings = {"RECONCILER_INTERVAL_SECONDS": "30",
                                "RECONCILER_WEBHOOK_TOKEN": TOKEN}
            async with controller_for(env, sim, **standby_settings) as standby, \
                    serving(standby, "127.0.0.1", port), anyio.create_task_group() as tg:
                stop = anyio.Event()
                tg.start_soon(run_forever, standby, stop)
                await asyncio.sleep(0.3)
                assert not standby.leadership.tokens()
                sim.send_webhooks(f"http://127.0.0.1:{port}/webhooks/evolution/default/{TOKEN}")
                sim.set_state(name, "close", code=401,
                              disconnect_object=device_removed_object(datetime.now(UTC)))

                async def marked() -> bool:
                    return (await env.row(row))["status"] == "disconnected"

                await wait_for(marked, timeout=3, what="the leader to mark the standby's hint")
                assert value(standby, "hints_total", source="webhook") == 0
                assert value(leader, "hints_total", source="webhook") >= 1
                stop.set()
