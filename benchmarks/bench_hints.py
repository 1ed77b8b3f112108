"""Hint -> converged latency (SPEC 4.5) with the daemon running at a 30 s interval.

    python benchmarks/bench_hints.py [--instances 1000] [--hints 25]

The simulator (seeded as in bench_pass, `/metrics` on) runs in a process of its own and sends
its webhooks to the daemon's receiver over loopback HTTP. Every instance has a row. The daemon
(real PostgreSQL, Redis, HTTP) runs its loop and its HTTP listener in this process; hints are
spread out at random over more than one interval, so some land while a full pass runs.

(a) a deleted row: from the DELETE's commit to `instance.removed` on Redis;
(b) a terminal close (401 device_removed) sent by webhook: from the close on the server to
    `instance.disconnected` on Redis.

Prints p50, p95, max, and the Evolution requests each hint cost (counted by the daemon; hints
during which a pass ran are left out of that count). The blast radius is raised for the run
(`RECONCILER_MAX_DELETIONS`): the sliding window would otherwise hold the 11th deletion back.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from importlib import resources
from multiprocessing.connection import Connection
from pathlib import Path

import anyio
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).parent))
from bench_pass import free_port

from reconciler.controller import Controller
from reconciler.loop import run_forever
from reconciler.observability import configure_logging
from reconciler.settings import load_settings
from reconciler.wiring import open_controller, serving

KEY = "bench-key"
TOKEN = "bench-hook-token"


def serve_simulator(conn: Connection, port: int, count: int) -> None:
    """The child: a seeded simulator, driven over `conn`."""
    from reconciler.simulator import Simulator
    from reconciler.simulator.server import seed
    from reconciler.simulator.state import device_removed_object

    sim = Simulator(api_key=KEY, version="2.3.6", metrics_enabled=True, port=port)
    names = seed(sim, count)
    sim.start_in_thread()
    conn.send((sim.url, names))
    while True:
        command, arg = conn.recv()
        if command == "stop":
            break
        if command == "webhooks":
            sim.send_webhooks(arg)
            conn.send(None)
        elif command == "close":
            at = time.time()
            sim.set_state(arg, "close", code=401,
                          disconnect_object=device_removed_object(datetime.now(UTC)))
            conn.send(at)
    sim.stop_thread()


def requests_made(controller: Controller) -> float:
    return sum(s.value for m in controller.recorder.metrics.registry.collect()
               for s in m.samples if s.name == "evolution_reconciler_evolution_requests_total")


def passes(controller: Controller) -> float:
    value = controller.recorder.metrics.registry.get_sample_value(
        "evolution_reconciler_reconcile_total", {"server": "default", "result": "success"})
    return value or 0.0


def summary(label: str, latencies: list[float], costs: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]
    cost = (f"{statistics.mean(costs):.1f} requests/hint (min {min(costs):.0f}, max "
            f"{max(costs):.0f}, {len(costs)} hints without a pass)" if costs else "n/a")
    return (f"  {label}: n={len(ordered)} p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms; {cost}")


async def bench(instances: int, hints: int) -> None:
    dsn = os.environ.get("RECONCILER_TEST_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("RECONCILER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=serve_simulator, args=(child, free_port(), instances),
                              daemon=True)
    process.start()
    url, names = parent.recv()
    suffix = uuid.uuid4().hex[:8]
    app_schema, own_schema, channel = f"bench_hc_{suffix}", f"bench_rec_{suffix}", f"bh-{suffix}"
    conn = await asyncpg.connect(dsn)
    events = aioredis.from_url(redis_url)
    pubsub = events.pubsub()
    try:
        sql = resources.files("reconciler").joinpath("sql/integrations.sql").read_text()
        await conn.execute(f'CREATE SCHEMA "{app_schema}"')
        await conn.execute(sql.replace("CREATE SCHEMA IF NOT EXISTS healthcare;", "")
                           .replace("healthcare.", f'"{app_schema}".'))
        status = ["connected", "connected", "connected", "disconnected", "pending"]
        rows = [(uuid.uuid4(), status[i % 5], "logged_out" if i % 5 == 3 else None,
                 json.dumps({"instance_name": name})) for i, name in enumerate(names)]
        await conn.executemany(
            f'INSERT INTO "{app_schema}".integrations (organization_id, type, provider, status,'
            " disconnect_reason, config) VALUES ($1, 'whatsapp', 'evolution', $2, $3, $4::jsonb)",
            rows)
        port = free_port()
        settings = load_settings({
            "RECONCILER_DATABASE_URL": dsn, "RECONCILER_REDIS_URL": redis_url,
            "RECONCILER_EVOLUTION_URL": url, "RECONCILER_EVOLUTION_API_KEY": KEY,
            "RECONCILER_INTEGRATIONS_TABLE": f"{app_schema}.integrations",
            "RECONCILER_SCHEMA": own_schema, "RECONCILER_EVENTS_CHANNEL": channel,
            "RECONCILER_MODE": "enforce", "RECONCILER_INTERVAL_SECONDS": "30",
            "RECONCILER_WEBHOOK_TOKEN": TOKEN, "RECONCILER_MAX_DELETIONS": "1000",
        })
        configure_logging("console", "error")
        await pubsub.subscribe(channel)
        arrived: dict[tuple[str, str], float] = {}
        awaited: dict[tuple[str, str], anyio.Event] = {}
        async with open_controller(settings) as controller, \
                serving(controller, "127.0.0.1", port), anyio.create_task_group() as tg:
            stop = anyio.Event()
            tg.start_soon(run_forever, controller, stop)

            async def listen() -> None:
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=0.01)
                    if message is not None:
                        event = json.loads(message["data"])
                        key = (event["type"], event["instance_name"])
                        arrived[key] = time.time()
                        if key in awaited:
                            awaited[key].set()

            tg.start_soon(listen)
            for _ in range(2400):  # the first pass, within two minutes
                if controller.population is not None:
                    break
                await anyio.sleep(0.05)
            await controller.store.desired.install_trigger()
            hook = f"http://127.0.0.1:{port}/webhooks/evolution/default/{TOKEN}"
            parent.send(("webhooks", hook))
            parent.recv()
            rng = random.Random(instances)
            live = [n for i, n in enumerate(names) if i % 5 in (0, 1, 2)]
            picked = rng.sample(live, 2 * hints)
            print(f"{instances} instances, {len(rows)} rows, daemon at a 30 s interval")
            results: dict[str, tuple[list[float], list[float]]] = {}
            for label, chosen in (("(a) deleted row -> instance.removed", picked[:hints]),
                                  ("(b) 401 by webhook -> instance.disconnected",
                                   picked[hints:])):
                latencies: list[float] = []
                costs: list[float] = []
                for name in chosen:
                    kind = "instance.removed" if label.startswith("(a)") else (
                        "instance.disconnected")
                    done = awaited[(kind, name)] = anyio.Event()
                    before, passes_before = requests_made(controller), passes(controller)
                    if label.startswith("(a)"):
                        at = time.time()
                        await conn.execute(
                            f'DELETE FROM "{app_schema}".integrations'
                            " WHERE config->>'instance_name' = $1", name)
                    else:
                        parent.send(("close", name))
                        at = parent.recv()
                    with anyio.fail_after(60):
                        await done.wait()
                    latencies.append(arrived[(kind, name)] - at)
                    await anyio.sleep(0.05)  # the reconcile's last requests are counted
                    if passes(controller) == passes_before:
                        costs.append(requests_made(controller) - before)
                    await anyio.sleep(rng.uniform(0.3, 1.5))
                results[label] = (latencies, costs)
            for label, (latencies, costs) in results.items():
                print(summary(label, latencies, costs))
            stop.set()
            tg.cancel_scope.cancel()
    finally:
        parent.send(("stop", None))
        process.join(timeout=10)
        await pubsub.aclose()
        await events.aclose()
        await conn.execute(f'DROP SCHEMA IF EXISTS "{app_schema}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{own_schema}" CASCADE')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--hints", type=int, default=25, help="hints of each kind (>= 20)")
    args = parser.parse_args()
    anyio.run(bench, args.instances, args.hints)


if __name__ == "__main__":
    main()
