"""The smaller commands: migrate, check, install-trigger, and the table output."""

from __future__ import annotations

from datetime import timedelta

from tests.integration.conftest import API_KEY, Env, clinic_name


def test_migrate_is_idempotent_and_touches_only_its_schema(env: Env) -> None:
    for _ in range(2):
        proc = env.cli("migrate")
        assert proc.returncode == 0, proc.stderr
        assert env.names.schema in proc.stdout


async def test_check_reaches_everything_and_names_what_fails(env: Env) -> None:
    env.sim.add(clinic_name(), state="open")
    proc = env.cli("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "database: ok" in proc.stdout
    assert "redis: ok" in proc.stdout
    expected = "server default: ok (v2 2.3.6, clientName 'evolution_exchange', 1 instances)"
    assert expected in proc.stdout

    proc = env.cli("check", RECONCILER_REDIS_URL="redis://:hunter2pw@127.0.0.1:1/0")
    assert proc.returncode == 1
    assert "redis: FAILED" in proc.stdout
    assert "hunter2pw" not in proc.stdout + proc.stderr
    assert API_KEY not in proc.stdout + proc.stderr


async def test_table_output_shows_drift_and_actions(env: Env) -> None:
    keeper = clinic_name()
    env.sim.add(keeper, state="open", owner_jid="5511900000001@s.whatsapp.net")
    await env.add_row(keeper)
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    env.sim.add("marketing-bot", state="open")
    proc = env.cli("plan", RECONCILER_ORPHAN_CONFIRMATIONS="1",
                   RECONCILER_MAX_DELETION_FRACTION="1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("plan (dry_run): 1 desired rows, 0 invalid")
    assert any(orphan in line and "orphan" in line for line in lines)
    assert any(orphan in line and "delete" in line and "dry_run" in line for line in lines)
    assert "(1 unmanaged instances left alone)" in lines


def test_install_trigger_needs_the_table(env: Env) -> None:
    assert env.cli("install-trigger").returncode == 0
    proc = env.cli("install-trigger", RECONCILER_INTEGRATIONS_TABLE="nowhere.integrations")
    assert proc.returncode == 2
    assert "RECONCILER_INTEGRATIONS_TABLE" in proc.stderr
