"""Scale out (SPEC 7): 50 servers x 200 instances, 1, 2 and 3 replicas (`make bench-scale`).

    python benchmarks/bench_scale.py [--servers 50] [--instances 200] [--interval 10]

The simulators share one process of their own (`scale_sims.py`, loopback only); each replica is a
real `reconciler run` with real PostgreSQL and Redis. Per replica count it prints: Evolution
requests per interval (all servers, and per server), the leases each replica holds, CPU seconds
per interval and peak RSS per replica, the time for an orphan on every server to be deleted, and
after SIGKILL of one replica, the time until every server is led again and an orphan on each of
its servers is deleted. Requests are the replicas' own `evolution_requests_total`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx

KEY = "bench-key"
PASSES = 'reconcile_total{result="success"'
"""Successful passes by server: only the leader's count (the others count `skipped`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run"],
            env={**env, "RECONCILER_HTTP_ADDR": f"127.0.0.1:{self.port}"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def leads(self, http: httpx.AsyncClient) -> list[str]:
        """The servers this replica says it leads (`leader{server} 1`)."""
        text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
        return [line.split('server="', 1)[1].split('"', 1)[0] for line in text.splitlines()
                if line.startswith("evolution_reconciler_leader{") and line.endswith(" 1.0")]

    async def counters(self, http: httpx.AsyncClient, series: str) -> dict[str, float]:
        """The series starting with `series` (a name and its first labels), summed by server."""
        text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(f"evolution_reconciler_{series}"):
                labels, value = line.rsplit(" ", 1)
                server = labels.split('server="', 1)[1].split('"', 1)[0]
                counts[server] = counts.get(server, 0.0) + float(value)
        return counts

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


async def wait_until(check: Any, timeout: float, what: str) -> float:
    """Seconds until `check()` is true (polled every 0.2 s)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not within {timeout} s")
        await anyio.sleep(0.2)
    return time.monotonic() - started


async def scenario(replica_count: int, args: argparse.Namespace, sims: subprocess.Popen[str],
                   servers: list[dict[str, Any]], dsn: str, redis_url: str) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    app_schema, own = f"bench_hc_{suffix}", f"bench_rec_{suffix}"
    conn = await asyncpg.connect(dsn)
    sql = resources.files("reconciler").joinpath("sql/integrations.sql").read_text()
    await conn.execute(f'CREATE SCHEMA "{app_schema}"')
    await conn.execute(sql.replace("healthcare.", f'"{app_schema}".').replace(
        "CREATE SCHEMA IF NOT EXISTS healthcare;", ""))
    await conn.copy_records_to_table(
        "integrations", schema_name=app_schema,
        columns=["organization_id", "type", "provider", "enabled", "status", "config"],
        records=[(uuid.uuid4(), "whatsapp", "evolution", True, "connected",
                  json.dumps({"instance_name": name}))
                 for s in servers for name in s["instances"]])
    config = Path(tempfile.mkdtemp(prefix="bench-scale-")) / "servers.toml"
    config.write_text("".join(
        f'[[servers]]\nname = "{s["name"]}"\nurl = "{s["url"]}"\napi_key = "{KEY}"\n'
        for s in servers))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")} | {
        "RECONCILER_DATABASE_URL": dsn, "RECONCILER_REDIS_URL": redis_url,
        "RECONCILER_CONFIG": str(config), "RECONCILER_MODE": "enforce",
        "RECONCILER_INTEGRATIONS_TABLE": f"{app_schema}.integrations",
        "RECONCILER_SCHEMA": own, "RECONCILER_INTERVAL_SECONDS": str(args.interval),
        "RECONCILER_ORPHAN_CONFIRMATIONS": "1", "RECONCILER_ORPHAN_GRACE_SECONDS": "0",
        "RECONCILER_EVENTS_CHANNEL": f"bench-{suffix}", "RECONCILER_LOG_LEVEL": "warning"}
    replicas = [Replica(env) for _ in range(replica_count)]
    names = [s["name"] for s in servers]

    async def leads() -> dict[str, int]:
        rows = await conn.fetch(f'SELECT holder, count(*) AS n FROM "{own}".leases'
                                " WHERE expires_at > now() GROUP BY holder")
        return {r["holder"]: r["n"] for r in rows}

    async def all_led() -> bool:
        try:
            return sum((await leads()).values()) == len(names)
        except asyncpg.UndefinedTableError:
            return False

    async def orphans_deleted(orphans: list[str]) -> bool:
        done = await conn.fetchval(
            f'SELECT count(DISTINCT instance_name) FROM "{own}".audit_log'
            " WHERE action = 'delete' AND outcome = 'ok' AND instance_name = ANY($1)", orphans)
        return bool(done == len(orphans))

    def add_orphans(on: list[str]) -> list[str]:
        assert sims.stdin is not None and sims.stdout is not None
        created = []
        for server in on:
            sims.stdin.write(f"orphan {server}\n")
            sims.stdin.flush()
            created.append(json.loads(sims.stdout.readline())["orphan"])
        return created

    async def decisions_twice() -> int:
        """Removals audited `ok` under more than one event id, or more than once."""
        return int(await conn.fetchval(
            f'SELECT count(*) FROM (SELECT instance_name FROM "{own}".audit_log'
            " WHERE action = 'delete' AND outcome = 'ok' GROUP BY instance_name"
            " HAVING count(*) > 1 OR count(DISTINCT event_id) > 1) AS twice"))

    result: dict[str, Any] = {"replicas": replica_count}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_until(all_led, 60, "every server led")
            await anyio.sleep(3 * args.interval)  # let membership and hand-back settle
            def delta(after: list[dict[str, float]], before: list[dict[str, float]],
                      server: str) -> float:
                return sum(a.get(server, 0) - b.get(server, 0)
                           for a, b in zip(after, before, strict=True))

            intervals = 6
            before = [await r.counters(http, "evolution_requests_total{") for r in replicas]
            passes_before = [await r.counters(http, PASSES) for r in replicas]
            cpu_before = [r.cpu_seconds() for r in replicas]
            started = time.monotonic()
            await anyio.sleep(intervals * args.interval)
            after = [await r.counters(http, "evolution_requests_total{") for r in replicas]
            passes_after = [await r.counters(http, PASSES) for r in replicas]
            per = (time.monotonic() - started) / args.interval
            cpu = [(r.cpu_seconds() - c) / per for r, c in zip(replicas, cpu_before, strict=True)]
            per_server = {n: delta(after, before, n) / per for n in names}
            per_pass = [delta(after, before, n) / max(1.0, delta(passes_after, passes_before, n))
                        for n in names]
            result |= {
                "requests_per_interval": sum(per_server.values()),
                "per_server_min": min(per_server.values()),
                "per_server_max": max(per_server.values()),
                "requests_per_server_per_pass": sorted({round(p, 2) for p in per_pass}),
                "leases": sorted((await leads()).values(), reverse=True),
                "cpu_s_per_interval": [round(c, 2) for c in cpu],
                "peak_rss_mb": [round(r.peak_rss_mb()) for r in replicas],
            }
            orphans = add_orphans(names)
            result["orphans_deleted_s"] = round(await wait_until(
                lambda: orphans_deleted(orphans), 4 * args.interval + 30, "orphans deleted"), 1)
            if replica_count > 1:
                victim = replicas[0]
                lost = await victim.leads(http)
                dead = await conn.fetchval(
                    f'SELECT holder FROM "{own}".leases WHERE server = $1', lost[0])
                victim.stop(signal.SIGKILL)
                killed_at = time.monotonic()
                orphans = add_orphans(lost)

                async def led_again() -> bool:
                    held = await conn.fetchval(
                        f'SELECT count(*) FROM "{own}".leases WHERE server = ANY($1)'
                        " AND expires_at > now() AND holder <> $2", lost, dead)
                    return bool(held == len(lost))

                await wait_until(led_again, 60, "every server led again")
                result["failover_led_again_s"] = round(time.monotonic() - killed_at, 1)
                await wait_until(lambda: orphans_deleted(orphans), 4 * args.interval + 60,
                                 "orphans on the lost servers deleted")
                result["failover_converged_s"] = round(time.monotonic() - killed_at, 1)
            result["removals_decided_twice"] = await decisions_twice()
    finally:
        for replica in replicas:
            replica.stop()
        await conn.execute(f'DROP SCHEMA IF EXISTS "{app_schema}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{own}" CASCADE')
        await conn.close()
    return result


async def main(args: argparse.Namespace) -> None:
    dsn = os.environ.get("RECONCILER_TEST_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("RECONCILER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    sims = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("scale_sims.py")), "--servers",
         str(args.servers), "--instances", str(args.instances), "--api-key", KEY],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sims.stdout is not None
        servers = json.loads(sims.stdout.readline())["servers"]
        results = [await scenario(n, args, sims, servers, dsn, redis_url)
                   for n in args.replicas]
    finally:
        sims.terminate()
        sims.wait(timeout=30)
    print(f"\nscale: {args.servers} servers x {args.instances} instances, interval "
          f"{args.interval:g} s (requests and CPU over 6 intervals)")
    for r in results:
        print(json.dumps(r))
    base = results[0]["requests_per_interval"]
    for r in results:
        ratio = r["requests_per_interval"] / base if base else float("nan")
        print(f"{r['replicas']} replica(s): {r['requests_per_interval']:.0f} Evolution requests"
              f" per interval ({ratio:.2f}x one replica; per server {r['per_server_min']:.1f}"
              f"-{r['per_server_max']:.1f}, per server and pass"
              f" {r['requests_per_server_per_pass']}); leases {r['leases']}; CPU "
              f"{r['cpu_s_per_interval']} s/interval; peak RSS {r['peak_rss_mb']} MB; orphan on"
              f" every server deleted in {r['orphans_deleted_s']} s"
              + (f"; after SIGKILL of one: led again in {r['failover_led_again_s']} s, its"
                 f" servers' orphans deleted in {r['failover_converged_s']} s"
                 if "failover_led_again_s" in r else "")
              + f"; removals decided twice: {r['removals_decided_twice']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    anyio.run(main, parser.parse_args())
