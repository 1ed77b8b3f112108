"""A server's deletions run concurrently, at most its client's concurrency at a time, and keep
every guarantee of the executor: each deletion's steps in order, a lost lease ends the pass with
nothing called or written after it, and a stop lets no new call start (SPEC 4.3, 5, 7).

The concurrency is observed, never timed: hooks at the failpoint steps count the deletions
between their steps and hold them at a barrier, and the simulator counts requests in flight.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel

from reconciler import failpoints
from reconciler.leadership import LEASE_TTL
from reconciler.model import Outcome
from tests.integration.conftest import Env, clinic_name, controller_for
from tests.integration.test_crash_points import stream_events
from tests.integration.test_daemon import free_port, wait_for

CONCURRENCY = 4
"""`EvolutionClient`'s default `max_concurrency`, which the daemon's clients keep."""
MANY = {"RECONCILER_MAX_DELETIONS": "100"}


async def orphans(env: Env, count: int, *, live_every: int = 0) -> list[str]:
    """`count` confirmed orphans (every `live_every`-th one open, to be logged out first) and a
    desired instance beside them that must survive."""
    keeper = clinic_name()
    env.sim.add(keeper, state="open", owner_jid="5511900000009@s.whatsapp.net")
    await env.add_row(keeper)
    names = []
    for index in range(count):
        name = clinic_name(age=timedelta(days=2))
        if live_every and index % live_every == 0:
            env.sim.add(name, state="open", owner_jid=f"55119000{index:05d}@s.whatsapp.net")
        else:
            env.sim.add(name, state="close")
        names.append(name)
    return names


def deletes_sent(env: Env) -> list[str]:
    return [p.rsplit("/", 1)[1] for m, p in env.sim.requests
            if m == "DELETE" and "/instance/delete/" in p]


async def intents(env: Env) -> dict[str, str]:
    """Deletions whose intent is committed and not yet confirmed: instance -> event id."""
    async with env.connect() as conn:
        rows = await conn.fetch(
            f'SELECT instance_name, delete_event_id FROM "{env.names.schema}".observations'
            " WHERE delete_requested_at IS NOT NULL")
    return {r["instance_name"]: str(r["delete_event_id"]) for r in rows}


def task_id() -> int:
    return anyio.get_current_task().id


ONE_DELETION = re.compile(
    r"(delete\.intent\.before delete\.intent\.after"
    r"( delete\.logout\.before delete\.logout\.after)?"
    r" delete\.call\.before delete\.call\.after ?)*")


async def test_a_servers_deletions_run_at_its_clients_concurrency_each_in_its_steps_order(
        env: Env) -> None:
    names = await orphans(env, 11, live_every=3)
    env.sim.fault("logout", delay=0.05)  # calls stay in flight a while: a bound too loose shows
    env.sim.fault("delete", delay=0.05)
    steps: list[tuple[int, str]] = []
    active = 0
    most = 0
    arrived = anyio.Event()

    def hook(step: str) -> Callable[[], Awaitable[None]]:
        async def seen() -> None:
            nonlocal active, most
            steps.append((task_id(), step))
            if step == "delete.intent.before":
                active += 1
                most = max(most, active)
                if most == CONCURRENCY:
                    arrived.set()
                with anyio.fail_after(10):  # a safety net: one at a time never fills the barrier
                    await arrived.wait()
            elif step == "delete.call.after":
                active -= 1
            await anyio.lowlevel.checkpoint()  # let the others move between any two steps
        return seen

    async with controller_for(env, env.sim, **MANY) as controller:
        with ExitStack() as hooks:
            for step in failpoints.DELETE_STEPS:
                hooks.enter_context(failpoints.hooked(step, hook(step)))
            result = await controller.run_pass()

    assert not result.failed, result.errors
    assert sorted(a.instance_name for a, o, _ in result.report.outcomes
                  if o is Outcome.OK) == sorted(names)
    assert not set(names) & set(env.sim.names()), "every orphan was deleted"
    assert len(env.sim.names()) == 1, "the desired instance survived"
    assert most == CONCURRENCY, "as many deletions at once as the client allows, never more"
    assert env.sim.max_in_flight <= CONCURRENCY

    by_task: dict[int, list[str]] = defaultdict(list)
    for task, step in steps:
        by_task[task].append(step)
    verify = [i for i, (_, step) in enumerate(steps) if step == "delete.verify.before"]
    assert len(verify) == 1, "one verification listing for the batch"
    verifier = steps[verify[0]][0]
    workers = {t: s for t, s in by_task.items() if t != verifier}
    assert len(workers) == CONCURRENCY
    for sequence in workers.values():
        assert ONE_DELETION.fullmatch(" ".join(sequence)), sequence
    assert sum(s.count("delete.intent.before") for s in workers.values()) == len(names)
    assert sum(s.count("delete.logout.before") for s in workers.values()) == len(names[::3])
    worker_steps = [i for i, (t, _) in enumerate(steps) if t != verifier]
    assert max(worker_steps) < verify[0], "verified once every deletion was answered"
    assert by_task[verifier] == ["delete.verify.before"] + [
        "delete.confirm.before", "delete.confirm.after"] * len(names)


async def test_one_failed_deletion_leaves_its_siblings_running_and_is_recorded(
        env: Env) -> None:
    names = await orphans(env, 6)
    env.sim.fault("delete", status=401, times=1)  # an operator error: not retried
    async with controller_for(env, env.sim, **MANY) as controller:
        result = await controller.run_pass()
    outcomes = sorted(o.value for _, o, _ in result.report.outcomes)
    assert outcomes == ["failed"] + ["ok"] * 5
    assert len(set(names) & set(env.sim.names())) == 1
    assert [r["outcome"] for r in await env.audit()].count("failed") == 1


async def test_a_lease_taken_while_deletions_are_in_flight_ends_them_calling_writing_nothing(
        env: Env) -> None:
    """Three deletes are held by the server when a fourth deletion finds the lease taken: the
    three are abandoned in flight (their intents say they are owed), nothing else starts, and
    the new leader verifies and publishes each removal under its one event id."""
    names = await orphans(env, 12)
    env.sim.fault("delete", hang=True)
    seen: dict[str, Any] = {}
    arrivals = 0
    settings = {**MANY, "RECONCILER_HTTP_TIMEOUT_SECONDS": "2"}
    async with controller_for(env, env.sim, **settings) as stale:
        async def take_over_once_three_calls_are_in_flight() -> None:
            nonlocal arrivals
            arrivals += 1
            if arrivals != CONCURRENCY:
                return
            async def three_sent() -> bool:
                return len(deletes_sent(env)) == CONCURRENCY - 1

            await wait_for(three_sent, timeout=10, what="three deletes in flight")
            token = stale.leadership.held["default"]
            seen["epoch"] = token.epoch
            seen["audit_id"] = await env.fetchval(
                f'SELECT coalesce(max(id), 0) FROM "{env.names.schema}".audit_log')
            new = await stale.store.leases.acquire("default", "operator", LEASE_TTL,
                                                  take_over=True)
            assert new is not None and new.epoch > token.epoch
            seen["requests"] = len(env.sim.requests)

        with failpoints.hooked("delete.call.before", take_over_once_three_calls_are_in_flight):
            result = await stale.run_pass()

        assert "requests" in seen, "never had three deletes in flight at once"
        assert [e.stage for e in result.errors] == ["apply"], result.errors
        assert "no longer current" in result.errors[0].message
        after = [r for r in env.sim.requests[seen["requests"]:] if r[0] == "DELETE"]
        assert after == [], "a DELETE was sent after the lease was lost"
        stale_writes = await env.fetchval(
            f'SELECT count(*) FROM "{env.names.schema}".audit_log WHERE id > $1 AND epoch = $2',
            seen["audit_id"], seen["epoch"])
        assert stale_writes == 0, "the stale pass wrote after losing its lease"
        assert result.report.delete_results == []
        in_flight = deletes_sent(env)
        assert len(in_flight) == CONCURRENCY - 1
        owed = await intents(env)
        assert len(owed) == CONCURRENCY and set(in_flight) < set(owed), owed

    env.sim.clear_faults()
    await env.sql(f'UPDATE "{env.names.schema}".leases SET expires_at = now()'
                  " WHERE holder = 'operator'")
    async with controller_for(env, env.sim, **MANY) as leader:
        for _ in range(3):
            await leader.run_pass()
            if not set(names) & set(env.sim.names()):
                break
    assert not set(names) & set(env.sim.names())
    await assert_one_removal_each(env, names, owed)


async def assert_one_removal_each(env: Env, names: list[str], owed: dict[str, str]) -> None:
    """One ok audit row per orphan; an intent committed earlier is confirmed under its id."""
    ok = [r for r in await env.audit() if r["outcome"] == "ok" and r["action"] == "delete"]
    assert sorted(r["instance_name"] for r in ok) == sorted(names)
    ids = {r["instance_name"]: str(r["event_id"]) for r in ok}
    assert {n: ids[n] for n in owed} == owed, "a removal owed was published under another id"


async def test_sigterm_mid_batch_starts_no_new_call_and_the_next_leader_finishes(
        env: Env) -> None:
    names = await orphans(env, 10)
    env.sim.fault("delete", hang=True)
    environ = {"RECONCILER_MODE": "enforce", "RECONCILER_ORPHAN_CONFIRMATIONS": "1",
               "RECONCILER_SHUTDOWN_SECONDS": "3", "RECONCILER_MAX_DELETIONS": "100",
               "RECONCILER_EVENTS_STREAM": f"{env.channel}:stream"}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run"],
            env=env.environ(**environ, RECONCILER_HTTP_ADDR=f"127.0.0.1:{free_port()}"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    async def exits(process: subprocess.Popen[str]) -> str:
        async def exited() -> bool:
            return process.poll() is not None

        process.send_signal(signal.SIGTERM)
        await wait_for(exited, timeout=30, what="the exit")  # test_shutdown holds the budget
        _, stderr = process.communicate(timeout=10)
        return stderr

    daemon = start()
    try:
        async def batch_in_flight() -> bool:
            return len(deletes_sent(env)) == CONCURRENCY

        await wait_for(batch_in_flight, timeout=30, what="a batch of deletes in flight")
        assert env.sim.max_in_flight == CONCURRENCY, "the batch fills the client, no more"
        stderr = await exits(daemon)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, stderr[-2000:]
    sent = deletes_sent(env)
    assert len(sent) == CONCURRENCY, "a call started after the stop"
    owed = await intents(env)
    assert set(owed) == set(sent), "exactly the deletions sent are owed, under their intents"

    env.sim.clear_faults()
    restarted = start()
    try:
        async def removed() -> bool:
            published = {e["instance_name"] for e in await stream_events(env)
                         if e["type"] == "instance.removed"}
            return published >= set(names)

        await wait_for(removed, timeout=30, what="every orphan removed and published")
    finally:
        stderr = await exits(restarted)
    assert restarted.returncode == 0, stderr[-2000:]
    assert not set(names) & set(env.sim.names())
    await assert_one_removal_each(env, names, owed)
    events = [e for e in await stream_events(env) if e["type"] == "instance.removed"]
    assert sorted(e["instance_name"] for e in events) == sorted(names), "one event each"
