"""Soak run (issue 8, "trust under failure"): two replicas, churn and faults for N minutes.

    python benchmarks/soak.py --minutes 30        (make soak MINUTES=30; --minutes 2 for a smoke)

Everything is real and on loopback: two Evolution simulators in a process of their own
(`soak_sim.py`, which logs every logout/delete call it receives), a PostgreSQL database created
for the run (so killing "the daemon's connections" can only hit this run's daemons), a
redis-server of its own (AOF, fsync always, so stopping it loses nothing), two
`python -m reconciler run` replicas in enforce mode and an occasional `reconciler once`.

While it runs, the churn deletes rows (their instances become orphans), creates rows with their
instance, re-points rows to a new instance (the clinic pairs again), pairs instances, and flaps
sessions (short reconnects, long transient closes, terminal 401 closes); the faults, one at a
time, stop Redis, terminate the daemons' database connections, make a server hang, restart a
server (502 for a moment, then every session `connecting`) and SIGKILL a replica. Then every
fault is cleared, the churn stops, and it waits for convergence and checks, from the server's
own record of calls, the database and the Redis stream:

- wrongful deletions: a logout or delete call naming an instance that a row named at that moment
  (the row inserted or re-pointed before the call, and not deleted or re-pointed away before it),
  or naming an unmanaged instance;
- lost events: an `ok` audit row with an `event_id` that never reached the stream;
- duplicate event ids per decision: several `instance.removed` ids for one (server, name); two
  marks in the same direction for one name with no opposite mark (and no status write by the
  churn) between them, in the audit log or on the stream; stream events no audit row names;
  more `instance.duplicate` ids for a group than the times the group can have (re)appeared;
- the time from the last fault cleared until convergence: no managed orphan on any server, every
  row's status as SPEC 4.1 says for its instance's live state, the outbox empty.

Exits 1 when one of the three counts is not 0 or it did not converge within the quiet period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis.asyncio as aioredis

from reconciler.simulator import ENDPOINTS, device_removed_object

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak_sim  # the simulators' process, next to this file

REPO = Path(__file__).resolve().parent.parent
API_KEY = "soak-key"
SERVERS = ("sim-a", "sim-b")
INTERVAL = 3.0
DISCONNECT_AFTER = 6.0
HTTP_TIMEOUT = 4.0
MANAGED = re.compile(r"^clinic-(?P<org>[0-9a-fA-F-]{36})-(?P<ts>[0-9]+)$")
FAULT_KINDS = ("redis_down", "db_kill", "server_hang", "server_restart", "replica_kill")
MARK_EVENTS = {"instance.disconnected", "instance.missing", "instance.connected"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clinic_name() -> str:
    """A fresh managed name; epoch ms plus a new org uuid, so each name is born (and dies) once."""
    return f"clinic-{uuid.uuid4()}-{int(time.time() * 1000)}"


# --- the harness's model of the world ------------------------------------------------------


@dataclass
class RowSpan:
    """One row naming one instance from `start` (commit acknowledged) to `end` (before the
    DELETE or re-pointing UPDATE was sent): the window in which deleting that name is wrong."""

    row_id: uuid.UUID
    name: str
    start: float
    end: float | None = None


@dataclass
class Row:
    row_id: uuid.UUID
    org: uuid.UUID
    name: str
    span: RowSpan


@dataclass
class Instance:
    """What the churn last made of an instance (the state a restart returns to)."""

    server: str
    state: str
    stored: str | None = None
    owner: str | None = None
    terminal: bool = False
    flap: int = 0
    """Bumped on every change, so a scheduled return to `open` only undoes its own flap."""
    fixed: bool = False
    """Part of a duplicate-number group: never flapped, deleted or re-pointed by the churn."""


@dataclass
class Fleet:
    rows: dict[uuid.UUID, Row] = field(default_factory=dict)
    spans: list[RowSpan] = field(default_factory=list)
    instances: dict[str, Instance] = field(default_factory=dict)
    pending_owner: dict[str, str] = field(default_factory=dict)
    """The phone a re-pointed row's new instance will be paired with (the same clinic's)."""
    status_writes: dict[str, list[float]] = field(default_factory=dict)
    unmanaged: set[str] = field(default_factory=set)
    restarting: set[str] = field(default_factory=set)
    phones: int = 0

    def named(self) -> set[str]:
        return {r.name for r in self.rows.values()}

    def new_phone(self) -> str:
        self.phones += 1
        return f"5511{self.phones:09d}@s.whatsapp.net"


@dataclass
class Stats:
    churn: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fault_windows: list[tuple[str, float, float]] = field(default_factory=list)
    once_exit_codes: Counter[int] = field(default_factory=Counter)
    sim_errors: int = 0
    passes: dict[str, float] = field(default_factory=dict)
    """Passes per replica incarnation, from its `reconcile_total` (success + error)."""


# --- processes ------------------------------------------------------------------------------


class SimHost:
    """The simulators' process, and a blocking pipe to it (used from threads, one at a time)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        ports = {name: free_port() for name in SERVERS}
        self.process = ctx.Process(target=soak_sim.serve, args=(child, ports, API_KEY),
                                   daemon=True, name="soak-simulators")
        self._lock = threading.Lock()
        self.urls: dict[str, str] = {}

    def start(self) -> None:
        self.process.start()
        if not self._conn.poll(30):
            raise SystemExit("the simulators did not start")
        self.urls = self._conn.recv()

    def _request(self, command: tuple[Any, ...]) -> Any:
        with self._lock:
            self._conn.send(command)
            if not self._conn.poll(30):
                raise RuntimeError("the simulators did not answer")
            status, result = self._conn.recv()
        if status != "ok":
            raise RuntimeError(result)
        return result

    async def call(self, server: str, method: str, *args: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(self._request, ("call", server, method, args, kwargs))

    async def snapshot(self, server: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await asyncio.to_thread(
            self._request, ("snapshot", server))
        return result

    async def destructive(self) -> list[soak_sim.DestructiveCall]:
        result: list[soak_sim.DestructiveCall] = await asyncio.to_thread(
            self._request, ("destructive",))
        return result

    async def destructive_count(self) -> int:
        count: int = await asyncio.to_thread(self._request, ("destructive_count",))
        return count

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._request(("stop",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


class RedisServer:
    """A redis-server of the run's own, restartable on the same port with its data (AOF)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = aioredis.from_url(self.url)
        try:
            for _ in range(100):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.1)
            raise SystemExit("redis-server did not start")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


class Replica:
    """One `reconciler run` subprocess; SIGKILLed and started again by the faults."""

    def __init__(self, name: str, env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.env = env
        self.logdir = logdir
        self.incarnation = 0
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def key(self) -> str:
        return f"{self.name}#{self.incarnation}"

    def start(self) -> None:
        self.incarnation += 1
        self.port = free_port()
        log = open(self.logdir / f"{self.key.replace('#', '-')}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run"],
            env=self.env | {"RECONCILER_HTTP_ADDR": f"127.0.0.1:{self.port}"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


# --- the run --------------------------------------------------------------------------------


class Soak:
    def __init__(self, minutes: float, admin_dsn: str, workdir: Path, seed: int) -> None:
        self.minutes = minutes
        self.admin_dsn = admin_dsn
        self.workdir = workdir
        self.rng = random.Random(seed)
        suffix = uuid.uuid4().hex[:8]
        self.database = f"soak_{suffix}"
        self.dsn = urlsplit(admin_dsn)._replace(path=f"/{self.database}").geturl()
        self.table = f"hc_{suffix}.integrations"
        self.schema = f"rec_{suffix}"
        self.stream = f"soak:{suffix}:stream"
        self.channel = f"soak:{suffix}"
        self.fleet = Fleet()
        self.stats = Stats()
        self.sims = SimHost()
        self.redis = RedisServer(workdir)
        self.replicas: list[Replica] = []
        self.pool: asyncpg.Pool | None = None
        self.deadline = 0.0
        self.churn_stopped = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    # --- setup and teardown ----------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        config = self.workdir / "servers.toml"
        config.write_text("".join(
            f'[[servers]]\nname = "{name}"\nurl = "{url}"\napi_key = "{API_KEY}"\n'
            f'version = "v2"\n\n' for name, url in self.sims.urls.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        return env | {
            "RECONCILER_CONFIG": str(config),
            "RECONCILER_DATABASE_URL": self.dsn,
            "RECONCILER_REDIS_URL": self.redis.url,
            "RECONCILER_MODE": "enforce",
            "RECONCILER_INTERVAL_SECONDS": str(INTERVAL),
            "RECONCILER_ORPHAN_GRACE_SECONDS": "0",
            "RECONCILER_ORPHAN_CONFIRMATIONS": "2",
            "RECONCILER_DISCONNECT_AFTER_SECONDS": str(DISCONNECT_AFTER),
            # ~20 managed instances per server and a few orphans at a time, faults included.
            "RECONCILER_MAX_DELETION_FRACTION": "0.5",
            "RECONCILER_HTTP_TIMEOUT_SECONDS": str(HTTP_TIMEOUT),
            "RECONCILER_INTEGRATIONS_TABLE": self.table,
            "RECONCILER_SCHEMA": self.schema,
            "RECONCILER_EVENTS_CHANNEL": self.channel,
            "RECONCILER_EVENTS_STREAM": self.stream,
            "RECONCILER_LOG_FORMAT": "json",
        }

    async def setup(self) -> None:
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        app_schema = self.table.split(".")[0]
        sql = (REPO / "deploy" / "sql" / "integrations.sql").read_text()
        await self.pool.execute(f'CREATE SCHEMA "{app_schema}"')
        await self.pool.execute(sql.replace("CREATE SCHEMA IF NOT EXISTS healthcare;", "")
                                .replace("healthcare.", f'"{app_schema}".'))
        self.sims.start()
        await self.redis.start()
        await self.seed()
        env = self.environ()
        for command in (["migrate"], ["install-trigger"]):
            proc = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "reconciler", *command], env=env,
                capture_output=True, text=True, timeout=60, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"reconciler {command[0]} failed: {proc.stderr[-2000:]}")
        logs = self.workdir / "logs"
        logs.mkdir()
        self.replicas = [Replica(f"r{i}", env, logs) for i in (1, 2)]
        for replica in self.replicas:
            replica.start()

    async def teardown(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.sims.stop()
        self.redis.stop()
        if self.pool is not None:
            await self.pool.close()
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await admin.close()

    # --- rows and instances ----------------------------------------------------------------

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None
        return self.pool

    async def insert_row(self, name: str, status: str, reason: str | None = None) -> Row:
        org = uuid.UUID(name[len("clinic-"):][:36])
        row_id: uuid.UUID = await self.db.fetchval(
            f"INSERT INTO {self.table} (organization_id, type, provider, status,"
            " disconnect_reason, config) VALUES ($1, 'whatsapp', 'evolution', $2, $3,"
            " $4::jsonb) RETURNING id", org, status, reason, json.dumps({"instance_name": name}))
        span = RowSpan(row_id, name, time.time())
        row = Row(row_id, org, name, span)
        self.fleet.rows[row_id] = row
        self.fleet.spans.append(span)
        self.fleet.status_writes.setdefault(name, []).append(span.start)
        return row

    async def delete_row(self, row: Row) -> None:
        row.span.end = time.time()
        del self.fleet.rows[row.row_id]
        await self.db.execute(f"DELETE FROM {self.table} WHERE id = $1", row.row_id)

    async def repoint_row(self, row: Row, name: str) -> None:
        """The clinic pairs again: the app points its row at a new instance, status pending."""
        row.span.end = time.time()
        await self.db.execute(
            f"UPDATE {self.table} SET config = $2::jsonb, status = 'pending',"
            " disconnect_reason = NULL, updated_at = now() WHERE id = $1",
            row.row_id, json.dumps({"instance_name": name}))
        row.name = name
        row.span = RowSpan(row.row_id, name, time.time())
        self.fleet.spans.append(row.span)
        self.fleet.status_writes.setdefault(name, []).append(row.span.start)

    async def add_instance(self, server: str, name: str, instance: Instance,
                           **fields: Any) -> None:
        self.fleet.instances[name] = instance
        await self.sims.call(server, "add", name, state=instance.state,
                             owner_jid=instance.owner, **fields)

    async def apply(self, name: str) -> None:
        """Push the model's state of `name` to its server (unless the server is restarting)."""
        instance = self.fleet.instances[name]
        if instance.server in self.fleet.restarting:
            return
        try:
            await self.sims.call(instance.server, "set_state", name, instance.state,
                                 stored_status=instance.stored)
        except RuntimeError:  # deleted by the daemon meanwhile
            self.stats.sim_errors += 1

    async def seed(self) -> None:
        """Per server: 10 paired, 2 waiting for their QR, 2 logged out by the phone, 2 orphans,
        1 unmanaged; plus one duplicate-number pair across the servers (both rows desired)."""
        for server in SERVERS:
            for kind, count in (("paired", 10), ("pending", 2), ("removed", 2), ("orphan", 2)):
                for _ in range(count):
                    name = clinic_name()
                    await asyncio.sleep(0.002)
                    if kind == "pending":
                        await self.insert_row(name, "pending")
                        await self.add_instance(server, name, Instance(server, "connecting"))
                        continue
                    owner = self.fleet.new_phone()
                    if kind == "removed":
                        await self.insert_row(name, "disconnected", "device_removed")
                        now = datetime.now(UTC)
                        await self.add_instance(
                            server, name, Instance(server, "close", owner=owner, terminal=True),
                            disconnection_code=401, disconnection_at=now,
                            disconnection_object=device_removed_object(now))
                        continue
                    if kind == "paired":
                        await self.insert_row(name, "connected")
                    await self.add_instance(server, name, Instance(server, "open", owner=owner))
            unmanaged = f"support-bot-{server}"
            self.fleet.unmanaged.add(unmanaged)
            await self.sims.call(server, "add", unmanaged, state="open",
                                 owner_jid=self.fleet.new_phone())
        phone = self.fleet.new_phone()
        for server in SERVERS:
            name = clinic_name()
            await self.insert_row(name, "connected")
            await self.add_instance(server, name,
                                    Instance(server, "open", owner=phone, fixed=True))

    # --- churn ------------------------------------------------------------------------------

    def pick(self, condition: Callable[[str, Instance], bool]) -> str | None:
        named = self.fleet.named()
        candidates = [n for n, i in self.fleet.instances.items()
                      if not i.fixed and i.server not in self.fleet.restarting
                      and condition(n, i) and n in named]
        return self.rng.choice(candidates) if candidates else None

    def live_server(self) -> str:
        up = [s for s in SERVERS if s not in self.fleet.restarting]
        return self.rng.choice(up or list(SERVERS))

    async def churn_delete_row(self) -> bool:
        rows = [r for r in self.fleet.rows.values()
                if not self.fleet.instances.get(r.name, Instance("", "")).fixed]
        if not rows:
            return False
        await self.delete_row(self.rng.choice(rows))
        return True

    async def churn_create(self) -> bool:
        """A clinic adds WhatsApp: the row first (pending), then its instance, waiting for a QR."""
        name = clinic_name()
        await self.insert_row(name, "pending")
        server = self.live_server()
        await self.add_instance(server, name, Instance(server, "connecting"))
        return True

    async def churn_repoint(self) -> bool:
        """A clinic pairs again into a new instance; the old one (maybe still live on the same
        phone) becomes an orphan, a `duplicate_number` one once the new one opens."""
        old = self.pick(lambda n, i: i.owner is not None)
        if old is None:
            return False
        row = next(r for r in self.fleet.rows.values() if r.name == old)
        name = clinic_name()
        await self.repoint_row(row, name)
        owner = self.fleet.instances[old].owner
        assert owner is not None
        self.fleet.pending_owner[name] = owner
        server = self.live_server()
        await self.add_instance(server, name, Instance(server, "connecting"))
        return True

    async def churn_pair(self) -> bool:
        name = self.pick(lambda n, i: i.state == "connecting" and i.owner is None)
        if name is None:
            return False
        instance = self.fleet.instances[name]
        instance.owner = self.fleet.pending_owner.pop(name, None) or self.fleet.new_phone()
        instance.state, instance.stored, instance.flap = "open", None, instance.flap + 1
        try:
            await self.sims.call(instance.server, "pair", name, instance.owner)
        except RuntimeError:
            self.stats.sim_errors += 1
        return True

    async def churn_flap(self, state: str, low: float, high: float) -> bool:
        """A transient drop (`connecting`, or `close` without a code): the database keeps
        `open`; it comes back by itself after `low`..`high` seconds."""
        name = self.pick(lambda n, i: i.state == "open" and i.owner is not None)
        if name is None:
            return False
        instance = self.fleet.instances[name]
        instance.state, instance.stored, instance.flap = state, "open", instance.flap + 1
        await self.apply(name)
        token = instance.flap

        async def back() -> None:
            await asyncio.sleep(self.rng.uniform(low, high))
            if instance.flap == token:
                instance.state, instance.stored = "open", None
                await self.apply(name)

        self.background(back())
        return True

    async def churn_terminal(self) -> bool:
        """The phone removed the linked device: 401 device_removed, closed for good."""
        name = self.pick(lambda n, i: i.state == "open" and i.owner is not None)
        if name is None:
            return False
        instance = self.fleet.instances[name]
        instance.state, instance.stored, instance.terminal = "close", None, True
        instance.flap += 1
        try:
            await self.sims.call(instance.server, "set_state", name, "close", code=401,
                                 disconnect_object=device_removed_object(datetime.now(UTC)))
        except RuntimeError:
            self.stats.sim_errors += 1
        return True

    async def churn_orphan(self) -> bool:
        """An instance nobody's row names (a leftover of another deploy): an orphan at birth."""
        name, server = clinic_name(), self.live_server()
        await self.add_instance(server, name,
                                Instance(server, "open", owner=self.fleet.new_phone()))
        return True

    async def churn_step(self) -> None:
        rows = len(self.fleet.rows)
        ops: list[tuple[str, float, Callable[[], Awaitable[bool]]]] = [
            ("delete_row", 3 if rows > 36 else 1.5 if rows > 24 else 0.3, self.churn_delete_row),
            ("create", 3 if rows < 24 else 1, self.churn_create),
            ("repoint", 1, self.churn_repoint),
            ("pair", 2, self.churn_pair),
            ("flap_connecting", 2, lambda: self.churn_flap("connecting", 1, 4)),
            ("flap_close_long", 1, lambda: self.churn_flap("close", DISCONNECT_AFTER + 3,
                                                           DISCONNECT_AFTER + 10)),
            ("close_401", 0.7, self.churn_terminal),
            ("orphan", 0.4, self.churn_orphan),
        ]
        kind, _, op = self.rng.choices(ops, weights=[w for _, w, _ in ops])[0]
        if await op():
            self.stats.churn[kind] += 1

    async def nap(self, low: float, high: float) -> bool:
        """Sleep `low`..`high` seconds, never past the deadline; False once it has passed."""
        await asyncio.sleep(max(0.0, min(self.rng.uniform(low, high), self.deadline - time.time())))
        return time.time() < self.deadline

    async def churn_loop(self) -> None:
        while time.time() < self.deadline:
            await self.churn_step()
            await self.nap(0.8, 2.0)
        await self.settle()
        self.churn_stopped = time.time()

    # --- faults -----------------------------------------------------------------------------

    async def fault(self, kind: str) -> None:
        """Inject one fault and clear it; the `finally` clears it whatever happens."""
        started = time.time()
        aimed = kind in ("db_kill", "replica_kill") and self.rng.random() < 0.5
        self.stats.faults[kind + (" (aimed)" if aimed else "")] += 1
        server = self.rng.choice(SERVERS)
        try:
            if kind == "redis_down":
                self.redis.stop()
                await asyncio.sleep(self.rng.uniform(10, 20))
            elif kind == "db_kill":
                if aimed:
                    await self.at_a_delete_call()
                for _ in range(3):
                    await self.db.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name LIKE 'evolution-reconciler%'"
                        " AND datname = current_database()")
                    await asyncio.sleep(self.rng.uniform(1, 3))
            elif kind == "server_hang":
                for endpoint in ENDPOINTS:
                    await self.sims.call(server, "fault", endpoint, hang=True)
                await asyncio.sleep(self.rng.uniform(8, 15))
            elif kind == "server_restart":
                self.fleet.restarting.add(server)
                for endpoint in ENDPOINTS:
                    await self.sims.call(server, "fault", endpoint, status=502,
                                         body="<html><h1>502 Bad Gateway</h1></html>")
                await asyncio.sleep(3)
                await self.sims.call(server, "clear_faults")
                await self.sims.call(server, "restart_sessions")
                await asyncio.sleep(self.rng.uniform(12, 20))
            elif kind == "replica_kill":
                if aimed:
                    await self.at_a_delete_call()
                victim = await self.leader() or self.rng.choice(self.replicas)
                victim.kill()
                await asyncio.sleep(self.rng.uniform(3, 8))
        finally:
            if kind == "redis_down":
                await self.redis.start()
            elif kind in ("server_hang", "server_restart"):
                await self.sims.call(server, "clear_faults")
                if kind == "server_restart":
                    self.fleet.restarting.discard(server)
                    for name, instance in list(self.fleet.instances.items()):
                        if instance.server == server:
                            await self.apply(name)
            elif kind == "replica_kill":
                for replica in self.replicas:
                    if replica.proc is None or replica.proc.poll() is not None:
                        replica.start()
            self.stats.fault_windows.append((kind, started, time.time()))

    async def at_a_delete_call(self) -> None:
        """Return right after the servers receive a logout or delete call (the daemon is then
        between its call and its audit row, the worst moment to lose it), or after 3 intervals.
        Deletes a row first, so that an orphan is on its way."""
        baseline = await self.sims.destructive_count()
        await self.churn_delete_row()
        for _ in range(int(3 * INTERVAL / 0.01)):
            if await self.sims.destructive_count() != baseline:
                return
            await asyncio.sleep(0.01)

    async def leader(self) -> Replica | None:
        """A replica that leads a server now (its `leader` gauge), if one answers."""
        async with httpx.AsyncClient(timeout=1) as http:
            for replica in self.rng.sample(self.replicas, len(self.replicas)):
                with contextlib.suppress(httpx.HTTPError):
                    text = (await http.get(f"http://127.0.0.1:{replica.port}/metrics")).text
                    if any(line.startswith("evolution_reconciler_leader{")
                           and not line.endswith(" 0.0") for line in text.splitlines()):
                        return replica
        return None

    async def fault_loop(self) -> None:
        kinds: list[str] = []
        while await self.nap(3, 8):
            if not kinds:
                kinds = self.rng.sample(FAULT_KINDS, len(FAULT_KINDS))
            await self.fault(kinds.pop())

    # --- the operator's `once`, and pass counting ------------------------------------------

    async def once_loop(self) -> None:
        env = self.environ()
        log = self.workdir / "logs" / "once.log"
        while await self.nap(25, 45):
            proc = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "reconciler", "once", "--output", "json"],
                env=env, capture_output=True, text=True, timeout=120, check=False)
            self.stats.once_exit_codes[proc.returncode] += 1
            with log.open("a") as out:
                out.write(proc.stdout[-4000:] + proc.stderr[-4000:] + "\n")

    async def scrape_loop(self, until: Callable[[], bool]) -> None:
        """Passes per replica incarnation, from the daemon's own counter (a SIGKILLed
        incarnation keeps its last scraped value, so a few of its passes go uncounted)."""
        async with httpx.AsyncClient(timeout=2) as http:
            while not until():
                for replica in self.replicas:
                    with contextlib.suppress(httpx.HTTPError):
                        text = (await http.get(f"http://127.0.0.1:{replica.port}/metrics")).text
                        self.stats.passes[replica.key] = sum(
                            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                            if line.startswith("evolution_reconciler_reconcile_total{")
                            and 'result="skipped"' not in line)
                await asyncio.sleep(2)

    # --- convergence ------------------------------------------------------------------------

    async def settle(self) -> None:
        """End of the churn: every transient flap comes back (the state the checks expect)."""
        for name, instance in list(self.fleet.instances.items()):
            if not instance.terminal and instance.owner is not None and instance.state != "open":
                instance.state, instance.stored, instance.flap = "open", None, instance.flap + 1
                await self.apply(name)

    async def divergence(self) -> list[str]:
        """What still differs from converged (empty when converged)."""
        live: dict[str, dict[str, Any]] = {}
        for server in SERVERS:
            live |= {i["name"]: i for i in await self.sims.snapshot(server)}
        rows = await self.db.fetch(
            f"SELECT status, enabled, config->>'instance_name' AS name FROM {self.table}")
        named = {r["name"] for r in rows}
        problems = [f"orphan {n}" for n in live if MANAGED.match(n) and n not in named]
        for row in rows:
            found = live.get(row["name"])
            if found is None:
                expected = {"disconnected"}
            elif found["state"] == "open" and found["owner_jid"]:
                expected = {"connected"}
            elif found["state"] == "close":
                expected = {"disconnected"}
            else:  # connecting, never paired: neither mark applies
                expected = {"pending", "disconnected"}
            if row["enabled"] and row["status"] not in expected:
                problems.append(f"row {row['name']} {row['status']} not in {sorted(expected)}")
        pending = await self.db.fetchval(
            f'SELECT count(*) FROM "{self.schema}".outbox WHERE published_at IS NULL')
        if pending:
            problems.append(f"{pending} outbox events pending")
        return problems

    async def converge(self, since: float, within: float) -> tuple[float | None, list[str]]:
        """Seconds from `since` until converged (then held for two more intervals)."""
        converged_at: float | None = None
        problems: list[str] = []
        while time.time() < since + within:
            problems = await self.divergence()
            now = time.time()
            if problems:
                converged_at = None
            elif converged_at is None:
                converged_at = now
            elif now - converged_at >= 2 * INTERVAL:
                return converged_at - since, []
            await asyncio.sleep(0.5)
        return None, problems

    # --- checks -----------------------------------------------------------------------------

    async def stream_events(self) -> list[dict[str, Any]]:
        client = aioredis.from_url(self.redis.url)
        events: list[dict[str, Any]] = []
        try:
            start = "-"
            while True:
                batch = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(
                    self.stream, min=start, count=1000))
                if not batch:
                    return events
                events += [json.loads(fields[b"event"]) for _, fields in batch]
                start = "(" + batch[-1][0].decode()
        finally:
            await client.aclose()

    def wrongful(self, calls: list[soak_sim.DestructiveCall]) -> list[str]:
        by_name: dict[str, list[RowSpan]] = {}
        for span in self.fleet.spans:
            by_name.setdefault(span.name, []).append(span)
        found = []
        for call in calls:
            if not MANAGED.match(call.name) or call.name in self.fleet.unmanaged:
                found.append(f"{call.endpoint} {call.server}/{call.name}: unmanaged")
                continue
            for span in by_name.get(call.name, []):
                if span.start <= call.at and (span.end is None or call.at < span.end):
                    found.append(f"{call.endpoint} {call.server}/{call.name}: row "
                                 f"{span.row_id} named it since {span.start:.3f}")
        return found

    def duplicates(self, audit: list[asyncpg.Record],
                   events: list[dict[str, Any]]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {"removed": [], "marks_audit": [], "marks_stream": [],
                                       "unaudited": [], "duplicate_groups": []}
        removed: dict[tuple[str, str], set[str]] = {}
        for r in audit:
            if r["action"] == "delete" and r["outcome"] == "ok" and r["event_id"]:
                removed.setdefault((r["server"], r["instance_name"]), set()).add(
                    str(r["event_id"]))
        for e in events:
            if e["type"] == "instance.removed":
                removed.setdefault((e["server"], e["instance_name"]), set()).add(e["event_id"])
        found["removed"] = [f"{s}/{n}: {len(ids)} ids" for (s, n), ids in removed.items()
                            if len(ids) > 1]
        # One name's marks alternate (disconnected or missing, then connected, ...): the same
        # mark twice in a row, with no status write by the churn between, is one decision twice.
        last: dict[str, tuple[str, datetime]] = {}
        for r in audit:
            if r["outcome"] != "ok" or not r["action"].startswith("mark_"):
                continue
            previous = last.get(r["instance_name"])
            writes = self.fleet.status_writes.get(r["instance_name"], [])
            if previous is not None and previous[0] == r["action"] and not any(
                    previous[1].timestamp() < w < r["at"].timestamp() for w in writes):
                found["marks_audit"].append(f"{r['action']} {r['instance_name']} (audit "
                                            f"{r['id']})")
            last[r["instance_name"]] = (r["action"], r["at"])
        seen_ids: set[str] = set()
        previous_type: dict[str, str] = {}
        for e in events:
            if e["event_id"] in seen_ids:
                continue  # delivered twice under one id: allowed
            seen_ids.add(e["event_id"])
            if e["type"] not in MARK_EVENTS:
                continue
            if previous_type.get(e["instance_name"]) == e["type"]:
                found["marks_stream"].append(f"{e['type']} {e['instance_name']}")
            previous_type[e["instance_name"]] = e["type"]
        audited = {str(r["event_id"]) for r in audit if r["event_id"]}
        found["unaudited"] = sorted({f"{e['type']} {e['instance_name']} {e['event_id']}"
                                     for e in events if e["event_id"] not in audited})
        # A group may clear and reappear with each server restart or hang: one id each time.
        allowed = 1 + sum(n for k, n in self.stats.faults.items()
                          if k in ("server_restart", "server_hang"))
        groups: dict[tuple[str, str], set[str]] = {}
        for e in events:
            if e["type"] == "instance.duplicate":
                groups.setdefault((e["reason"], e["instance_name"]), set()).add(e["event_id"])
        found["duplicate_groups"] = [f"{k} {n}: {len(ids)} ids" for (k, n), ids in groups.items()
                                     if len(ids) > allowed]
        return found

    # --- the whole run ----------------------------------------------------------------------

    async def run(self) -> int:
        print(f"soak: {self.minutes} min, database {self.database}, logs in {self.workdir}",
              flush=True)
        await self.setup()
        self.deadline = time.time() + self.minutes * 60
        done = False
        scraper = asyncio.create_task(self.scrape_loop(lambda: done))
        await asyncio.gather(self.churn_loop(), self.fault_loop(), self.once_loop())
        for task in list(self.tasks):
            task.cancel()
        # Quiet from here: the churn settled its flaps and stopped, the last fault is cleared.
        last_cleared = max([end for _, _, end in self.stats.fault_windows]
                           + [self.churn_stopped])
        print("soak: churn and faults over, waiting for convergence", flush=True)
        quiet = max(90.0, 20 * INTERVAL)
        took, problems = await self.converge(last_cleared, quiet)
        done = True
        await scraper
        for replica in self.replicas:
            replica.stop()
        audit = list(await self.db.fetch(f'SELECT * FROM "{self.schema}".audit_log ORDER BY id'))
        events = await self.stream_events()
        calls = await self.sims.destructive()
        return self.report(took, problems, audit, events, calls)

    def background(self, job: Awaitable[None]) -> None:
        task = asyncio.ensure_future(job)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def report(self, took: float | None, problems: list[str], audit: list[asyncpg.Record],
               events: list[dict[str, Any]], calls: list[soak_sim.DestructiveCall]) -> int:
        wrongful = self.wrongful(calls)
        stream_ids = {e["event_id"] for e in events}
        lost = [f"{r['action']} {r['instance_name']} {r['event_id']}" for r in audit
                if r["outcome"] == "ok" and r["event_id"] and str(r["event_id"]) not in stream_ids]
        dups = self.duplicates(audit, events)
        duplicate_count = sum(len(v) for v in dups.values())
        outcomes = Counter(f"{r['action']}:{r['outcome']}" for r in audit)
        guards = Counter(r["guard"] for r in audit if r["guard"])
        deletes = [c for c in calls if c.endpoint == "delete" and c.existed]
        print("\n=== soak result ===")
        print(f"wrongful deletions:                {len(wrongful)}")
        print(f"lost events:                       {len(lost)}")
        print(f"duplicate event ids per decision:  {duplicate_count}  "
              + "  ".join(f"{k}={len(v)}" for k, v in dups.items()))
        if took is None:
            print(f"longest time to converge:          did NOT converge within the quiet period"
                  f" ({len(problems)} differences)")
        else:
            print(f"longest time to converge:          {took:.1f} s after the last fault cleared"
                  f" and the churn stopped ({took / INTERVAL:.1f} intervals of {INTERVAL:.0f} s)")
        print("--- totals")
        print(f"deletions on the servers:          {len(deletes)} (logout calls "
              f"{sum(c.endpoint == 'logout' for c in calls)}, delete calls "
              f"{sum(c.endpoint == 'delete' for c in calls)})")
        print("audit (action:outcome):            "
              + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
        silent = sum(r["outcome"] == "ok" and not r["event_id"] and r["action"] != "flag"
                     for r in audit)
        print(f"ok decisions without an event_id:  {silent}")
        print("guards that blocked:               "
              + (", ".join(f"{k}={v}" for k, v in sorted(guards.items())) or "none"))
        print(f"events on the stream:              {len(events)} ("
              + ", ".join(f"{k}={v}" for k, v in sorted(Counter(
                  e["type"] for e in events).items())) + f"; {len(stream_ids)} distinct ids)")
        print("faults injected:                   "
              + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.faults.items())))
        print("churn:                             "
              + ", ".join(f"{k}={v}" for k, v in sorted(self.stats.churn.items())))
        print(f"passes:                            {sum(self.stats.passes.values()):.0f} by the "
              f"replicas ({len(self.stats.passes)} incarnations), "
              f"{sum(self.stats.once_exit_codes.values())} `once` (exit codes "
              f"{dict(sorted(self.stats.once_exit_codes.items()))})")
        for title, items in (("wrongful", wrongful), ("lost", lost),
                             *((f"duplicate {k}", v) for k, v in dups.items()),
                             ("not converged", problems)):
            for item in items[:10]:
                print(f"  {title}: {item}")
            if len(items) > 10:
                print(f"  {title}: ... {len(items) - 10} more")
        failed = wrongful or lost or duplicate_count or took is None
        return 1 if failed else 0


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="reconciler-soak-"))
    soak = Soak(args.minutes, args.database_url, workdir, args.seed)
    try:
        return await soak.run()
    finally:
        await soak.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--database-url", default=os.environ.get(
        "RECONCILER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="an admin connection; the run creates (and drops) a database of its own")
    args = parser.parse_args()
    print(f"soak: seed {args.seed}", flush=True)
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
