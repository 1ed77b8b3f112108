"""A pass against the cost of its I/O, and deletions against the daemon's own concurrency.

    python benchmarks/bench_pass.py --instances 10000 [--probes]   # a pass that finds no drift
    python benchmarks/bench_pass.py --deletions 1000 --latency 0.02

The simulator runs in its own process (`--seed N`: 60% open, 20% closed by a 401, 20% never
paired), as a real server would; PostgreSQL and Redis are the machine's (or
RECONCILER_TEST_DATABASE_URL / RECONCILER_TEST_REDIS_URL). The daemon runs in a process of its
own too, so that its peak RSS is the daemon's and nothing else's.

No drift: every instance has its row, in the status the platform would give it. The floor is the
pass's own I/O done raw, timed in this process before and after the daemon's passes: one
`fetchInstances`, one `/metrics` (or, without it, the `connectionState` probes the pass made, at
the pace `RECONCILER_PROBE_RPS` allows) and one SELECT of the rows, each read to its last byte and
not parsed. The pass is the median of the warm passes; CPU is the daemon's process time per pass.

Deletions: `--deletions N` orphans (and as many desired instances), every call answered after
`--latency` seconds, one pass under `--allow-mass-deletion` after the orphans are confirmed. The
bound is what the daemon's concurrency allows: requests in flight per server / (calls per
deletion * latency).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from importlib import resources
from typing import Any

import anyio
import asyncpg
import httpx

KEY = "bench-key"
WARM_PASSES = 5
FLOOR_RUNS = 5
DSN = os.environ.get("RECONCILER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("RECONCILER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_kib() -> int:
    """This process's own peak RSS (`VmHWM`): `ru_maxrss` would carry the parent's across exec."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])


def requests_by_endpoint(metrics_text: str) -> dict[str, float]:
    """Evolution calls so far by endpoint, from the daemon's own counter."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("evolution_reconciler_evolution_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            endpoint = labels.split('endpoint="', 1)[1].split('"', 1)[0]
            counts[endpoint] = counts.get(endpoint, 0.0) + float(value)
    return counts


# --- the daemon's side, in its own process ---------------------------------------------------

async def daemon_passes(env: dict[str, str], deletions: bool) -> dict[str, Any]:
    from reconciler.controller import PassOptions
    from reconciler.observability import configure_logging
    from reconciler.settings import load_settings
    from reconciler.wiring import open_controller, tune_collector

    configure_logging("console", "error")
    tune_collector()
    settings = load_settings(env)
    passes: list[dict[str, Any]] = []
    async with open_controller(settings) as controller, controller.leadership.leading():
        controller.verify_timeout = 60.0

        async def one(options: PassOptions) -> None:
            before = requests_by_endpoint(controller.recorder.metrics.exposition().decode())
            started, cpu = time.perf_counter(), time.process_time()
            result = await controller.run_pass(options)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            after = requests_by_endpoint(controller.recorder.metrics.exposition().decode())
            made = {e: after[e] - before.get(e, 0.0) for e in after if after[e] > before.get(e, 0)}
            passes.append({
                "wall": wall, "cpu": cpu, "requests": made, "errors": result.errors,
                "drift": len(result.plan.drift) if result.plan else 0,
                "peak_rss_kib": peak_rss_kib(),
                "deleted": sum(1 for a, o, _ in result.report.outcomes
                               if a.kind.value == "delete" and o.value == "ok"),
            })

        before = peak_rss_kib()
        if deletions:
            while not passes or passes[-1]["deleted"] == 0:
                await one(PassOptions(allow_mass_deletion=True))
                if len(passes) > 5:
                    break
        else:
            for _ in range(1 + WARM_PASSES):
                await one(PassOptions())
        peak = peak_rss_kib()
        page = None if deletions else await time_status_page(controller)
        concurrency = min(c.max_concurrency for c in controller.clients.values())
    return {"passes": passes, "rss_before_kib": before, "max_rss_kib": peak, "page": page,
            "probe_rps": settings.probe_rps, "concurrency": concurrency}


async def time_status_page(controller: Any) -> dict[str, float]:
    """`GET /` over loopback after the passes: its serve time; it must ask Evolution nothing."""
    from reconciler.wiring import serving

    port = free_port()
    async with serving(controller, "127.0.0.1", port), httpx.AsyncClient() as http:
        with anyio.fail_after(10):
            while True:
                try:
                    await http.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    await anyio.sleep(0.05)
        before = sum(requests_by_endpoint(controller.recorder.metrics.exposition().decode())
                     .values())
        times = []
        for _ in range(20):
            started = time.perf_counter()
            page = await http.get(f"http://127.0.0.1:{port}/")
            times.append(time.perf_counter() - started)
            page.raise_for_status()
        made = sum(requests_by_endpoint(controller.recorder.metrics.exposition().decode())
                   .values()) - before
    times.sort()
    return {"median": times[10], "worst": times[-1], "kib": len(page.content) / 1024,
            "requests": made}


def daemon_main() -> None:
    request = json.loads(sys.stdin.read())
    print(json.dumps(anyio.run(daemon_passes, request["env"], request["deletions"])))


def run_daemon(env: dict[str, str], deletions: bool) -> dict[str, Any]:
    answer = subprocess.run([sys.executable, __file__, "--daemon"], check=True,
                            input=json.dumps({"env": env, "deletions": deletions}),
                            capture_output=True, text=True)
    return dict(json.loads(answer.stdout))


# --- this process: the simulator, the rows and the floor ------------------------------------

async def wait_for(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    with anyio.fail_after(60):
        while True:
            try:
                return list((await http.get("/instance/fetchInstances")).json())
            except httpx.TransportError:
                await anyio.sleep(0.1)


async def create_rows(conn: asyncpg.Connection, schema: str,
                      listing: list[dict[str, Any]], keep: int) -> int:
    sql = resources.files("reconciler").joinpath("sql/integrations.sql").read_text()
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.execute(sql.replace("CREATE SCHEMA IF NOT EXISTS healthcare;", "")
                       .replace("healthcare.", f'"{schema}".'))
    status = {"open": "connected", "close": "disconnected", "connecting": "pending"}
    rows = [(uuid.uuid4(), status[i["connectionStatus"]],
             "logged_out" if i["connectionStatus"] == "close" else None,
             json.dumps({"instance_name": i["name"]}))
            for i in listing[:keep]]
    await conn.executemany(
        f'INSERT INTO "{schema}".integrations (organization_id, type, provider, status,'
        " disconnect_reason, config) VALUES ($1, 'whatsapp', 'evolution', $2, $3, $4::jsonb)",
        rows)
    return len(rows)


async def floor_once(http: httpx.AsyncClient, conn: asyncpg.Connection, schema: str,
                     metrics: bool) -> float:
    """The pass's I/O, raw: each body read whole, nothing parsed (probes are paced: the pacing
    of those the pass made is added by `report_passes`)."""
    started = time.perf_counter()
    (await http.get("/instance/fetchInstances")).raise_for_status()
    if metrics:
        (await http.get("/metrics")).raise_for_status()
    await conn.fetch(f'SELECT * FROM "{schema}".integrations'
                     " WHERE type = 'whatsapp' AND provider = 'evolution' ORDER BY id")
    return time.perf_counter() - started


async def bench(instances: int, metrics: bool, deletions: int, latency: float) -> None:
    port = free_port()
    seeded = instances or 2 * deletions
    args = [sys.executable, "-m", "reconciler.simulator", "--port", str(port),
            "--api-key", KEY, "--seed", str(seeded), "--latency", str(latency)]
    sim = subprocess.Popen(args + (["--metrics"] if metrics else []),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    suffix = uuid.uuid4().hex[:8]
    app_schema, own_schema = f"bench_hc_{suffix}", f"bench_rec_{suffix}"
    conn = await asyncpg.connect(DSN)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"apikey": KEY}, timeout=120) as http:
            listing = await wait_for(http)
            rows = await create_rows(conn, app_schema, listing,
                                     len(listing) - deletions if deletions else len(listing))
            del listing
            env = {
                "RECONCILER_DATABASE_URL": DSN, "RECONCILER_REDIS_URL": REDIS,
                "RECONCILER_EVOLUTION_URL": f"http://127.0.0.1:{port}",
                "RECONCILER_EVOLUTION_API_KEY": KEY,
                "RECONCILER_INTEGRATIONS_TABLE": f"{app_schema}.integrations",
                "RECONCILER_SCHEMA": own_schema, "RECONCILER_EVENTS_CHANNEL": f"bench-{suffix}",
                "RECONCILER_EVENTS_STREAM": "",
                "RECONCILER_ORPHAN_GRACE_SECONDS": "0", "RECONCILER_MODE": "enforce",
            }
            if deletions:
                report_deletions(run_daemon(env, deletions=True), deletions, latency)
                return
            floors = [await floor_once(http, conn, app_schema, metrics)
                      for _ in range(FLOOR_RUNS)]
            daemon = run_daemon(env, deletions=False)
            floors += [await floor_once(http, conn, app_schema, metrics)
                       for _ in range(FLOOR_RUNS)]
            report_passes(daemon, floors, seeded, rows, metrics)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{app_schema}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{own_schema}" CASCADE')
        await conn.close()


def report_passes(daemon: dict[str, Any], floors: list[float], instances: int, rows: int,
                  metrics: bool) -> None:
    cold, warm = daemon["passes"][0], daemon["passes"][1:]
    probe_rps = daemon["probe_rps"]
    probes = statistics.median(p["requests"].get("connectionState", 0) for p in warm)
    floor = statistics.median(floors) + (max(0.0, probes - 1) / probe_rps if probes else 0.0)
    wall = statistics.median(p["wall"] for p in warm)
    cpu = statistics.median(p["cpu"] for p in warm)
    requests = statistics.median(sum(p["requests"].values()) for p in warm)
    errors = [e for p in daemon["passes"] for e in p["errors"]]
    drift = max(p["drift"] for p in warm)
    source = "/metrics" if metrics else f"connectionState probes ({probes:.0f} per pass, paced)"
    print(f"{instances} instances, {rows} rows, no drift, live state from {source}")
    print(f"  floor {floor * 1000:.0f} ms | pass {wall * 1000:.0f} ms"
          f" (cold {cold['wall'] * 1000:.0f} ms) | ratio {wall / floor:.2f}x"
          f" | CPU {cpu:.3f} s/pass ({cpu / 30 * 100:.1f}% of a core at 30 s)"
          f" | peak RSS {daemon['max_rss_kib'] / 1024:.0f} MiB"
          f" ({daemon['rss_before_kib'] / 1024:.0f} before the first pass)"
          f" | {requests:.0f} Evolution requests/pass | drift {drift} | errors {len(errors)}")
    page = daemon["page"]
    print(f"  status page GET /: median {page['median'] * 1000:.1f} ms,"
          f" worst {page['worst'] * 1000:.1f} ms, {page['kib']:.0f} KiB,"
          f" {page['requests']:.0f} Evolution requests")


def report_deletions(daemon: dict[str, Any], orphans: int, latency: float) -> None:
    done = daemon["passes"][-1]
    calls = {e: n for e, n in done["requests"].items() if e in ("logout", "delete")}
    per_deletion = sum(calls.values()) / max(1, done["deleted"])
    concurrency = daemon["concurrency"]
    bound = concurrency / (per_deletion * latency)
    rate = done["deleted"] / done["wall"]
    print(f"{orphans} orphans, every call answered after {latency * 1000:.0f} ms,"
          f" guard lifted: {done['deleted']} deleted in {done['wall']:.2f} s"
          f" = {rate:.0f} deletions/s; bound {bound:.0f}/s ({concurrency} requests in flight,"
          f" {per_deletion:.1f} calls per deletion) | ratio {rate / bound:.2f}"
          f" | errors {len(done['errors'])}")


def main() -> None:
    if sys.argv[1:] == ["--daemon"]:
        daemon_main()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--probes", action="store_true",
                        help="a server without /metrics: live state from connectionState probes")
    parser.add_argument("--deletions", type=int, default=0,
                        help="measure a pass that deletes this many orphans instead")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the simulator takes to answer each call")
    args = parser.parse_args()
    anyio.run(bench, 0 if args.deletions else args.instances, not args.probes, args.deletions,
              args.latency)


if __name__ == "__main__":
    main()
