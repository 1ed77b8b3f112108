"""End-to-end fixtures: a simulator on loopback, settings pointing at it, seeding helpers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from reconciler.controller import Controller
from reconciler.settings import load_settings
from reconciler.simulator import Simulator
from reconciler.wiring import open_controller
from tests.conftest import DbNames

API_KEY = "test-global-key-7f3a9c"


def clinic_name(org: uuid.UUID | None = None, *, age: timedelta = timedelta(days=1)) -> str:
    created = datetime.now(UTC) - age
    return f"clinic-{org or uuid.uuid4()}-{int(created.timestamp() * 1000)}"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A v2.3.6 simulator in its own thread, so CLI subprocesses can talk to it."""
    simulator = Simulator(api_key=API_KEY, version="2.3.6")
    simulator.start_in_thread()
    yield simulator
    simulator.stop_thread()


@dataclass
class Env:
    """Everything a test needs to run the CLI against real services and the simulator."""

    database_url: str
    redis_url: str
    names: DbNames
    channel: str
    sim: Simulator
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def stream(self) -> str:
        return f"{self.channel}:stream"

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        env.update({
            "RECONCILER_DATABASE_URL": self.database_url,
            "RECONCILER_REDIS_URL": self.redis_url,
            "RECONCILER_EVOLUTION_URL": self.sim.url,
            "RECONCILER_EVOLUTION_API_KEY": API_KEY,
            "RECONCILER_INTEGRATIONS_TABLE": self.names.integrations_table,
            "RECONCILER_SCHEMA": self.names.schema,
            "RECONCILER_EVENTS_CHANNEL": self.channel,
            # The stream is on by default: each test gets its own, as it gets its own channel.
            "RECONCILER_EVENTS_STREAM": self.stream,
            "RECONCILER_ORPHAN_GRACE_SECONDS": "0",
            # Tests use small servers; the fraction guard has tests of its own.
            "RECONCILER_MAX_DELETION_FRACTION": "1",
            "RECONCILER_LOG_FORMAT": "json",
        })
        env.update(self.extra)
        env.update(overrides)
        return env

    def cli(self, *args: str, timeout: float = 60,
            **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args], env=self.environ(**overrides),
            capture_output=True, text=True, timeout=timeout, check=False)

    def cli_json(self, *args: str, **overrides: str) -> tuple[int, dict[str, Any]]:
        proc = self.cli(*args, "--output", "json", **overrides)
        assert proc.stdout, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.database_url)
        try:
            yield conn
        finally:
            await conn.close()

    async def add_row(self, name: str | None, *, org: uuid.UUID | None = None,
                      status: str = "connected", enabled: bool = True,
                      config: Any = None) -> uuid.UUID:
        async with self.connect() as conn:
            cfg = config if config is not None else {"instance_name": name}
            row_id: uuid.UUID = await conn.fetchval(
                f"INSERT INTO {self.names.integrations_table} (organization_id, type, provider,"
                " enabled, status, config) VALUES ($1, 'whatsapp', 'evolution', $2, $3, $4::jsonb)"
                " RETURNING id",
                org or uuid.uuid4(), enabled, status, json.dumps(cfg))
            return row_id

    async def row(self, row_id: uuid.UUID) -> asyncpg.Record:
        async with self.connect() as conn:
            record = await conn.fetchrow(
                f"SELECT * FROM {self.names.integrations_table} WHERE id = $1", row_id)
            assert record is not None
            return record

    async def all_rows(self) -> list[asyncpg.Record]:
        async with self.connect() as conn:
            return list(await conn.fetch(
                f"SELECT * FROM {self.names.integrations_table} ORDER BY id"))

    async def audit(self) -> list[asyncpg.Record]:
        async with self.connect() as conn:
            return await conn.fetch(f'SELECT * FROM "{self.names.schema}".audit_log ORDER BY id')

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.connect() as conn:
            return await conn.fetchval(query, *args)

    async def sql(self, query: str, *args: Any) -> str:
        async with self.connect() as conn:
            return await conn.execute(query, *args)


async def keeper_and_orphan(env: Env, sim: Simulator) -> tuple[str, str]:
    """A desired live instance and a two-day-old closed orphan beside it on `sim`."""
    keeper = clinic_name()
    sim.add(keeper, state="open", owner_jid="5511900000009@s.whatsapp.net")
    await env.add_row(keeper)
    orphan = clinic_name(age=timedelta(days=2))
    sim.add(orphan, state="close")
    return keeper, orphan


@pytest.fixture
async def env(database_url: str, redis_url: str, db_names: DbNames, channel: str,
              sim: Simulator) -> AsyncIterator[Env]:
    environment = Env(database_url, redis_url, db_names, channel, sim)
    yield environment
    client = aioredis.from_url(redis_url)
    try:
        await client.delete(environment.stream)
    finally:
        await client.aclose()


@asynccontextmanager
async def controller_for(env: Env, sim: Simulator, **overrides: str) -> AsyncIterator[Controller]:
    """An in-process controller in enforce mode, leading every server, against `sim`."""
    environ = env.environ(**{"RECONCILER_MODE": "enforce", "RECONCILER_ORPHAN_CONFIRMATIONS": "1",
                             "RECONCILER_EVOLUTION_URL": sim.url, **overrides})
    settings = load_settings({k: v for k, v in environ.items() if k.startswith("RECONCILER_")})
    async with open_controller(settings) as controller, controller.leadership.leading():
        yield controller


class EventTap:
    """Collects the events published on a channel while a test runs."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self.client = aioredis.from_url(redis_url)
        self.pubsub = self.client.pubsub()
        self.channel = channel
        self.events: list[dict[str, Any]] = []

    async def drain(self, *, expect: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Everything received so far; waits until at least `expect` events have arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                self.events.append(json.loads(message["data"]))
                continue
            if len(self.events) >= expect or loop.time() > deadline:
                return self.events


@pytest.fixture
async def events(redis_url: str, channel: str) -> AsyncIterator[EventTap]:
    tap = EventTap(redis_url, channel)
    await tap.pubsub.subscribe(channel)
    yield tap
    await tap.pubsub.aclose()
    await tap.client.aclose()
