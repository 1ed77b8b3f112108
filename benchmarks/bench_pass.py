"""Time whole reconcile passes over N simulated instances (real PostgreSQL, Redis, HTTP).

    python benchmarks/bench_pass.py [--instances 1000] [--probes]

The simulator runs in its own process, as a real server would (`--seed N`: 60% open, 20% closed
by a 401, 20% never paired). The integrations table gets a row for 95% of them, with the status
the platform would have; the other 5% are orphans. Uses the machine's PostgreSQL/Redis (or
RECONCILER_TEST_DATABASE_URL / RECONCILER_TEST_REDIS_URL). Prints the wall time of a cold pass
(empty memory), of a warm one, the Evolution requests each made, and the peak Python memory of a
third pass traced with tracemalloc (tracing slows it, so it is timed apart), then the time to serve
the status page `GET /` from what those passes left.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from importlib import resources

import anyio
import asyncpg
import httpx

from reconciler.controller import Controller
from reconciler.observability import configure_logging
from reconciler.settings import load_settings
from reconciler.wiring import open_controller, serving

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def requests_total(metrics_text: str) -> float:
    """Evolution calls so far, from the daemon's own counter."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("evolution_reconciler_evolution_requests_total{"))


async def bench(instances: int, metrics_enabled: bool) -> None:
    dsn = os.environ.get("RECONCILER_TEST_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("RECONCILER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    port = free_port()
    args = [sys.executable, "-m", "reconciler.simulator", "--port", str(port),
            "--api-key", KEY, "--seed", str(instances)]
    sim = subprocess.Popen(args + (["--metrics"] if metrics_enabled else []),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    suffix = uuid.uuid4().hex[:8]
    app_schema, own_schema = f"bench_hc_{suffix}", f"bench_rec_{suffix}"
    conn = await asyncpg.connect(dsn)
    try:
        async with httpx.AsyncClient(base_url=url, headers={"apikey": KEY}, timeout=120) as http:
            with anyio.fail_after(60):
                while True:
                    try:
                        listing = (await http.get("/instance/fetchInstances")).json()
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.1)
        sql = resources.files("reconciler").joinpath("sql/integrations.sql").read_text()
        await conn.execute(f'CREATE SCHEMA "{app_schema}"')
        await conn.execute(sql.replace("CREATE SCHEMA IF NOT EXISTS healthcare;", "")
                           .replace("healthcare.", f'"{app_schema}".'))
        status = {"open": "connected", "close": "disconnected", "connecting": "pending"}
        rows = [(uuid.uuid4(), status[i["connectionStatus"]],
                 "logged_out" if i["connectionStatus"] == "close" else None,
                 json.dumps({"instance_name": i["name"]}))
                for n, i in enumerate(listing) if n % 20]
        await conn.executemany(
            f'INSERT INTO "{app_schema}".integrations (organization_id, type, provider, status,'
            " disconnect_reason, config) VALUES ($1, 'whatsapp', 'evolution', $2, $3, $4::jsonb)",
            rows)
        settings = load_settings({
            "RECONCILER_DATABASE_URL": dsn, "RECONCILER_REDIS_URL": redis_url,
            "RECONCILER_EVOLUTION_URL": url, "RECONCILER_EVOLUTION_API_KEY": KEY,
            "RECONCILER_INTEGRATIONS_TABLE": f"{app_schema}.integrations",
            "RECONCILER_SCHEMA": own_schema, "RECONCILER_EVENTS_CHANNEL": f"bench-{suffix}",
        })
        configure_logging("console", "error")
        print(f"{len(listing)} instances listed, {len(rows)} desired rows, live state from "
              f"{'/metrics' if metrics_enabled else 'connectionState probes'}")
        async with open_controller(settings) as controller, controller.leadership.leading():
            for label in ("cold pass", "warm pass", "traced pass"):
                before = requests_total(controller.recorder.metrics.exposition().decode())
                if label == "traced pass":
                    tracemalloc.start()
                started = time.perf_counter()
                result = await controller.run_pass()
                elapsed = time.perf_counter() - started
                made = requests_total(controller.recorder.metrics.exposition().decode()) - before
                line = (f"{label}: {elapsed * 1000:.0f} ms, {made:.0f} Evolution requests, "
                        f"{len(result.plan.drift) if result.plan else 0} drift entries, "
                        f"{len(result.report.outcomes)} actions audited, errors={result.errors}")
                if label == "traced pass":
                    _, peak = tracemalloc.get_traced_memory()
                    tracemalloc.stop()
                    line += f", peak Python memory {peak / 2**20:.1f} MiB"
                print(line)
            await time_status_page(controller)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{app_schema}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{own_schema}" CASCADE')
        await conn.close()


async def time_status_page(controller: Controller) -> None:
    """`GET /` over loopback after the passes: its serve time; it must ask Evolution nothing."""
    port = free_port()
    async with serving(controller, "127.0.0.1", port), httpx.AsyncClient() as http:
        with anyio.fail_after(10):
            while True:
                try:
                    await http.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    await anyio.sleep(0.05)
        before = requests_total(controller.recorder.metrics.exposition().decode())
        times = []
        for _ in range(20):
            started = time.perf_counter()
            page = await http.get(f"http://127.0.0.1:{port}/")
            times.append(time.perf_counter() - started)
            page.raise_for_status()
        made = requests_total(controller.recorder.metrics.exposition().decode()) - before
    times.sort()
    print(f"status page GET /: median {times[10] * 1000:.1f} ms, worst {times[-1] * 1000:.1f} ms,"
          f" {len(page.content) / 1024:.0f} KiB, {made:.0f} Evolution requests")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--probes", action="store_true",
                        help="a server without /metrics: live state from connectionState probes")
    args = parser.parse_args()
    anyio.run(bench, args.instances, not args.probes)


if __name__ == "__main__":
    main()
