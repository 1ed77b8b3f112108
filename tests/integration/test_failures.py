"""Bad settings, unreachable parts and failing servers: clear errors, right exit codes, no harm."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from tests.integration.conftest import API_KEY, Env, EventTap, clinic_name

ENFORCE = {"RECONCILER_MODE": "enforce", "RECONCILER_ORPHAN_CONFIRMATIONS": "1"}


async def add_keeper(env: Env) -> str:
    """A desired, healthy instance: without one the `empty_desired` guard holds every delete."""
    keeper = clinic_name(age=timedelta(days=9))
    env.sim.add(keeper, state="open", owner_jid="5511900003333@s.whatsapp.net")
    await env.add_row(keeper, status="connected")
    return keeper


def test_bad_setting_exits_2_naming_it(env: Env) -> None:
    proc = env.cli("once", RECONCILER_MODE="enforced")
    assert proc.returncode == 2
    assert "RECONCILER_MODE" in proc.stderr
    assert env.sim.requests == []


def test_missing_integrations_table_exits_2(env: Env) -> None:
    proc = env.cli("once", RECONCILER_INTEGRATIONS_TABLE="nowhere.integrations")
    assert proc.returncode == 2
    assert "RECONCILER_INTEGRATIONS_TABLE" in proc.stderr
    assert env.sim.requests == []


def test_unreachable_database_exits_1_without_secrets(env: Env) -> None:
    proc = env.cli("once", RECONCILER_DATABASE_URL="postgresql://app:s3cr3tpw@127.0.0.1:1/x")
    assert proc.returncode == 1
    assert "s3cr3tpw" not in proc.stderr + proc.stdout


async def test_wrong_api_key_is_an_operator_error_and_the_key_never_shows(env: Env) -> None:
    wrong = "wrong-key-0d9e8f7a"
    code, out = env.cli_json("once", RECONCILER_EVOLUTION_API_KEY=wrong, **ENFORCE)
    assert code == 1
    assert out["servers"]["default"]["ok"] is False
    assert out["servers"]["default"]["operator_error"] is True
    proc = env.cli("once", RECONCILER_EVOLUTION_API_KEY=wrong, RECONCILER_LOG_LEVEL="debug")
    for secret in (wrong, API_KEY):
        assert secret not in proc.stdout + proc.stderr


async def test_failing_listing_deletes_nothing(env: Env) -> None:
    await add_keeper(env)
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="open")
    for status, body in [(500, {"status": 500, "error": "Internal Server Error",
                                "response": {"message": "Can't reach database server"}}),
                         (200, {"error": True, "message": "[object Object]"}),
                         (200, "<html><body>502 Bad Gateway</body></html>")]:
        env.sim.fault("fetchInstances", status=status, body=body)
        code, out = env.cli_json("once", **ENFORCE)
        assert code == 1, out
        assert out["servers"]["default"]["ok"] is False
        assert [a for a in out["actions"] if a["outcome"] == "ok"] == []
        env.sim.clear_faults()
    assert orphan in env.sim.names()
    assert not [m for m, _ in env.sim.requests if m == "DELETE"]


async def test_redis_down_keeps_events_in_the_outbox_until_it_is_back(
        env: Env, events: EventTap) -> None:
    await add_keeper(env)
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    code, out = env.cli_json("once", RECONCILER_REDIS_URL="redis://127.0.0.1:1/0", **ENFORCE)
    assert code == 1, out
    assert orphan not in env.sim.names()
    assert [e["stage"] for e in out["errors"]] == ["publish"]
    assert await events.drain(timeout=0.3) == []

    code, out = env.cli_json("once", **ENFORCE)
    assert code == 0, out
    [event] = await events.drain(expect=1)
    assert (event["type"], event["instance_name"]) == ("instance.removed", orphan)


async def test_recheck_blocks_a_delete_when_a_row_appears(env: Env) -> None:
    """A row inserted between the read and the call holds the delete back (guard `recheck`)."""
    await add_keeper(env)
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    env.sim.fault("fetchInstances", delay=1.0, times=1)
    proc = asyncio.create_task(asyncio.to_thread(env.cli_json, "once", **ENFORCE))
    await asyncio.sleep(0)
    for _ in range(200):
        if any(path.startswith("/instance/fetchInstances") for _, path in env.sim.requests):
            break
        await asyncio.sleep(0.01)
    await env.add_row(orphan, org=uuid.uuid4())
    code, out = await proc
    assert code == 0, out
    assert [(a["action"], a["outcome"], a["guard"]) for a in out["actions"]] == [
        ("delete", "blocked", "recheck")]
    assert orphan in env.sim.names()
