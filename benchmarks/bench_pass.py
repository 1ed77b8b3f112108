"""Time one reconcile pass over N simulated instances (real PostgreSQL, Redis, HTTP).

    python benchmarks/bench_pass.py [--instances 1000] [--metrics | --probes]

Uses the machine's PostgreSQL/Redis on their default ports (or RECONCILER_TEST_DATABASE_URL /
RECONCILER_TEST_REDIS_URL); seeds N instances, 95% of them desired and connected, 5% orphans.
Prints the wall time of the first pass (cold: memory empty) and of the second (warm), the number
of Evolution requests, and the peak Python memory.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources

import anyio
import asyncpg

from reconciler.cli import open_controller
from reconciler.evolution.simulator import Simulator
from reconciler.observability import configure_logging
from reconciler.settings import load_settings


async def bench(instances: int, metrics_enabled: bool) -> None:
    dsn = os.environ.get("RECONCILER_TEST_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("RECONCILER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    suffix = uuid.uuid4().hex[:8]
    app_schema, own_schema = f"bench_hc_{suffix}", f"bench_rec_{suffix}"
    conn = await asyncpg.connect(dsn)
    sql = resources.files("reconciler").joinpath("sql/integrations.sql").read_text()
    await conn.execute(f'CREATE SCHEMA "{app_schema}"')
    await conn.execute(sql.replace("CREATE SCHEMA IF NOT EXISTS healthcare;", "")
                       .replace("healthcare.", f'"{app_schema}".'))
    sim = Simulator(api_key="bench", version="2.3.6", metrics_enabled=metrics_enabled)
    now = datetime.now(UTC)
    rows = []
    for i in range(instances):
        org = uuid.uuid4()
        name = f"clinic-{org}-{int((now - timedelta(days=1)).timestamp() * 1000) + i}"
        sim.add(name, state="open", owner_jid=f"55119{i:08d}@s.whatsapp.net",
                created_at=now - timedelta(days=1))
        if i % 20:
            rows.append((org, json.dumps({"instance_name": name})))
    await conn.executemany(
        f'INSERT INTO "{app_schema}".integrations (organization_id, type, provider, status,'
        " config) VALUES ($1, 'whatsapp', 'evolution', 'connected', $2::jsonb)", rows)
    try:
        async with sim:
            settings = load_settings({
                "RECONCILER_DATABASE_URL": dsn, "RECONCILER_REDIS_URL": redis_url,
                "RECONCILER_EVOLUTION_URL": sim.url, "RECONCILER_EVOLUTION_API_KEY": "bench",
                "RECONCILER_INTEGRATIONS_TABLE": f"{app_schema}.integrations",
                "RECONCILER_SCHEMA": own_schema, "RECONCILER_LOG_LEVEL": "error",
                "RECONCILER_EVENTS_CHANNEL": f"bench-{suffix}",
            })
            configure_logging("console", "error")
            async with open_controller(settings) as controller, controller.leading():
                for label in ("first pass (cold)", "second pass (warm)"):
                    before = len(sim.requests)
                    tracemalloc.start()
                    started = time.perf_counter()
                    result = await controller.run_pass()
                    elapsed = time.perf_counter() - started
                    _, peak = tracemalloc.get_traced_memory()
                    tracemalloc.stop()
                    drift = len([d for d in result.plan.drift]) if result.plan else 0
                    print(f"{label}: {elapsed * 1000:.0f} ms, {len(sim.requests) - before} "
                          f"Evolution requests, peak traced memory {peak / 2**20:.1f} MiB, "
                          f"{drift} drift entries, errors={result.errors}")
    finally:
        await conn.execute(f'DROP SCHEMA "{app_schema}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{own_schema}" CASCADE')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--probes", action="store_true",
                        help="server without /metrics: live state from connectionState probes")
    args = parser.parse_args()
    print(f"{args.instances} instances, live state from "
          f"{'connectionState probes' if args.probes else '/metrics'}")
    anyio.run(bench, args.instances, not args.probes)


if __name__ == "__main__":
    main()
