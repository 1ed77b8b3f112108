"""One decision, one `event_id`, whatever happens in between (SPEC 5, 7), tried at every step.

A pass that deletes, marks and flags is broken at each step of `reconciler.failpoints`: the
daemon is SIGKILLed there and started again (crash points), or its lease is taken over there
while it runs (takeover points). Either way every decision converges with one event id, nothing
desired is deleted, and a pass whose lease was taken writes and calls nothing more.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from reconciler import failpoints
from reconciler.leadership import LEASE_TTL
from reconciler.simulator import device_removed_object
from tests.integration.conftest import Env, clinic_name, controller_for
from tests.integration.test_daemon import free_port, wait_for

EXPECTED = {"instance.removed", "instance.disconnected", "instance.duplicate"}


@dataclass(frozen=True)
class Fleet:
    """One pass's worth of decisions: a live orphan to log out and delete, a terminal 401 to
    mark, a duplicate row to flag, and two desired instances that must survive everything."""

    orphan: str
    marked: str
    doubled: str
    keeper: str


async def seed(env: Env) -> Fleet:
    fleet = Fleet(*(clinic_name(age=timedelta(days=3)) for _ in range(4)))
    env.sim.add(fleet.orphan, state="open", owner_jid="5511900000009@s.whatsapp.net")
    env.sim.add(fleet.marked, state="close", owner_jid="5511900000002@s.whatsapp.net",
                disconnection_code=401,
                disconnection_object=device_removed_object(datetime.now(UTC)))
    env.sim.add(fleet.doubled, state="open", owner_jid="5511900000003@s.whatsapp.net")
    env.sim.add(fleet.keeper, state="open", owner_jid="5511900000004@s.whatsapp.net")
    await env.add_row(fleet.marked, status="connected")
    await env.add_row(fleet.doubled, status="connected")
    await env.add_row(fleet.doubled, status="connected")
    await env.add_row(fleet.keeper, status="connected")
    return fleet


def settings_for(env: Env) -> dict[str, str]:
    """What `controller_for` does not set already (enforce, one confirmation)."""
    return {"RECONCILER_INTERVAL_SECONDS": "1", "RECONCILER_EVENTS_STREAM": stream_of(env)}


def stream_of(env: Env) -> str:
    return f"{env.channel}:stream"


async def stream_events(env: Env) -> list[dict[str, Any]]:
    client = aioredis.from_url(env.redis_url)
    try:
        entries = await client.xrange(stream_of(env))
    finally:
        await client.aclose()
    return [json.loads(fields[b"event"]) for _, fields in entries]


async def converged(env: Env, fleet: Fleet) -> bool:
    kinds = {e["type"] for e in await stream_events(env)}
    pending = await env.fetchval(
        f'SELECT count(*) FROM "{env.names.schema}".outbox WHERE published_at IS NULL')
    return (fleet.orphan not in env.sim.names() and kinds >= EXPECTED and pending == 0)


async def assert_one_event_id_per_decision(env: Env, fleet: Fleet) -> None:
    events = await stream_events(env)
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in events:
        ids[(event["type"], event["instance_name"])].add(event["event_id"])
    assert dict(ids) == {
        ("instance.removed", fleet.orphan): ids[("instance.removed", fleet.orphan)],
        ("instance.disconnected", fleet.marked): ids[("instance.disconnected", fleet.marked)],
        ("instance.duplicate", fleet.doubled): ids[("instance.duplicate", fleet.doubled)],
    }, "exactly the three decisions were published"
    assert all(len(found) == 1 for found in ids.values()), f"two event ids for one decision: {ids}"
    audit = await env.audit()
    ok = [r for r in audit if r["outcome"] == "ok"]
    assert sorted(str(r["event_id"]) for r in ok) == sorted(
        {e["event_id"] for e in events}), "each published event has exactly one ok audit row"
    names = set(env.sim.names())
    assert {fleet.marked, fleet.doubled, fleet.keeper} <= names, "nothing desired was deleted"
    row = next(r for r in await env.all_rows()
               if r["config"] and fleet.marked in str(r["config"]))
    assert (row["status"], row["disconnect_reason"]) == ("disconnected", "device_removed")


def daemon(env: Env, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run"],
        env=env.environ(**settings_for(env), RECONCILER_MODE="enforce",
                        RECONCILER_ORPHAN_CONFIRMATIONS="1",
                        RECONCILER_HTTP_ADDR=f"127.0.0.1:{free_port()}", **extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def exited(process: subprocess.Popen[str], timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while process.poll() is None:
        assert loop.time() < deadline, "the process did not reach its failpoint"
        await asyncio.sleep(0.05)
    return process.returncode


@pytest.mark.parametrize("step", failpoints.STEPS)
async def test_a_daemon_killed_at_any_step_converges_with_one_event_id_each(
        env: Env, step: str) -> None:
    fleet = await seed(env)
    crashed = daemon(env, **{failpoints.ENV: step})
    try:
        code = await exited(crashed, timeout=30)
    finally:
        if crashed.poll() is None:
            crashed.kill()
        _, stderr = crashed.communicate(timeout=10)
    assert code == -signal.SIGKILL, f"never reached {step}: {stderr[-2000:]}"
    await env.sql(f'UPDATE "{env.names.schema}".leases SET expires_at = now()')  # its TTL passed

    restarted = daemon(env)
    try:
        await wait_for(lambda: converged(env, fleet), timeout=30, what="convergence")
    finally:
        restarted.send_signal(signal.SIGTERM)
        _, stderr = restarted.communicate(timeout=20)
    assert restarted.returncode == 0, stderr[-2000:]
    await assert_one_event_id_per_decision(env, fleet)


@asynccontextmanager
async def taken_over_at(env: Env, step: str) -> AsyncIterator[dict[str, Any]]:
    """A daemon's pass whose lease an operator takes at `step`; yields what the hook saw."""
    seen: dict[str, Any] = {}
    async with controller_for(env, env.sim, **settings_for(env)) as stale:
        async def take_over() -> None:
            if seen:
                return
            token = stale.leadership.held["default"]
            seen["epoch"] = token.epoch
            seen["audit_id"] = await env.fetchval(
                f'SELECT coalesce(max(id), 0) FROM "{env.names.schema}".audit_log')
            seen["requests"] = len(env.sim.requests)
            new = await stale.store.leases.acquire("default", "operator", LEASE_TTL,
                                                  take_over=True)
            assert new is not None and new.epoch > token.epoch
            seen["taken"] = new

        with failpoints.hooked(step, take_over):
            await stale.run_pass()
        seen["calls_after"] = [r for r in env.sim.requests[seen.get("requests", 0):]
                               if r[0] == "DELETE"] if seen else []
        yield seen


@pytest.mark.parametrize("step", failpoints.STEPS)
async def test_a_pass_whose_lease_is_taken_at_any_step_writes_and_calls_nothing_more(
        env: Env, step: str) -> None:
    fleet = await seed(env)
    async with taken_over_at(env, step) as seen:
        assert seen, f"the pass never reached {step}"
        stale_writes = await env.fetchval(
            f'SELECT count(*) FROM "{env.names.schema}".audit_log'
            " WHERE id > $1 AND epoch = $2", seen["audit_id"], seen["epoch"])
        assert stale_writes == 0, "the stale pass wrote after losing its lease"
        assert seen["calls_after"] == [], "the stale pass called Evolution after losing its lease"
        await env.sql(f'UPDATE "{env.names.schema}".leases SET expires_at = now()'
                      " WHERE holder = 'operator'")
    async with controller_for(env, env.sim, **settings_for(env)) as operator:
        for _ in range(3):
            await operator.run_pass()
            if await converged(env, fleet):
                break
    assert await converged(env, fleet)
    await assert_one_event_id_per_decision(env, fleet)
