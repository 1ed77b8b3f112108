"""SIGTERM: out within `RECONCILER_SHUTDOWN_SECONDS`, whatever a server is doing (SPEC 7)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import timedelta

from tests.integration.conftest import Env, clinic_name
from tests.integration.test_daemon import free_port, wait_for

BUDGET = 3.0


def start(env: Env, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run"],
        env=env.environ(RECONCILER_MODE="enforce", RECONCILER_ORPHAN_CONFIRMATIONS="1",
                        RECONCILER_SHUTDOWN_SECONDS=str(BUDGET),
                        RECONCILER_HTTP_ADDR=f"127.0.0.1:{free_port()}", **extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def stop_and_time(daemon: subprocess.Popen[str]) -> float:
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    while daemon.poll() is None:
        assert time.monotonic() - started < 30, "still running 30 s after SIGTERM"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def requested(env: Env, method: str, endpoint: str) -> None:
    async def seen() -> bool:
        return any(m == method and endpoint in path for m, path in env.sim.requests)

    await wait_for(seen, timeout=20, what=f"{method} {endpoint}")


async def sigterm_during(env: Env, method: str, endpoint: str, **extra: str) -> None:
    """Start the daemon, SIGTERM it once `endpoint` was called, and require a clean exit within
    the budget."""
    daemon = start(env, **extra)
    try:
        await requested(env, method, endpoint)
        took = await stop_and_time(daemon)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _, stderr = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, stderr[-2000:]
    assert took <= BUDGET, f"exited {took:.1f} s after SIGTERM (budget {BUDGET} s)"


async def test_sigterm_while_a_listing_hangs_exits_within_the_budget(env: Env) -> None:
    env.sim.fault("fetchInstances", hang=True)
    await sigterm_during(env, "GET", "/instance/fetchInstances",
                         RECONCILER_HTTP_TIMEOUT_SECONDS="60")
    holders = await env.fetchval(
        f'SELECT count(*) FROM "{env.names.schema}".leases WHERE expires_at > now()')
    assert holders == 0, "the leases were released for a standby to take over at once"


async def test_sigterm_while_a_delete_hangs_exits_in_time_and_the_removal_is_not_lost(
        env: Env) -> None:
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    keeper = clinic_name(age=timedelta(days=2))
    env.sim.add(keeper, state="open", owner_jid="5511900000004@s.whatsapp.net")
    await env.add_row(keeper, status="connected")
    env.sim.fault("delete", hang=True)
    stream = f"{env.channel}:stream"
    await sigterm_during(env, "DELETE", "/instance/delete/", RECONCILER_EVENTS_STREAM=stream)
    intent = await env.fetchval(
        f'SELECT delete_event_id FROM "{env.names.schema}".observations'
        " WHERE instance_name = $1 AND delete_requested_at IS NOT NULL", orphan)
    assert intent is not None, "the delete sent stays owed, under its event id"

    env.sim.clear_faults()
    restarted = start(env, RECONCILER_EVENTS_STREAM=stream)
    try:
        async def removed() -> bool:
            return bool(await env.fetchval(
                f'SELECT count(*) FROM "{env.names.schema}".outbox WHERE event_id = $1'
                " AND published_at IS NOT NULL", intent))

        await wait_for(removed, timeout=30, what="instance.removed under the intent's id")
    finally:
        await stop_and_time(restarted)
        restarted.communicate(timeout=10)
    assert orphan not in env.sim.names() and keeper in env.sim.names()
