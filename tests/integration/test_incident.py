"""The root-cause incident, end to end through the `reconciler` command.

Real PostgreSQL, real Redis, the simulator over HTTP; the CLI runs as a subprocess exactly as an
operator would run it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from tests.integration.conftest import Env, EventTap, clinic_name

PHONE = "5511988887777@s.whatsapp.net"


async def seed_incident(env: Env) -> tuple[uuid.UUID, str, str, uuid.UUID]:
    """Orphan A (its row deleted) and new B for the same number, both live."""
    org = uuid.uuid4()
    orphan = clinic_name(org, age=timedelta(days=3))
    replacement = clinic_name(org, age=timedelta(hours=1))
    env.sim.add(orphan, state="open", owner_jid=PHONE)
    env.sim.add(replacement, state="open", owner_jid=PHONE)
    row_b = await env.add_row(replacement, org=org, status="connected")
    return org, orphan, replacement, row_b


async def test_enforce_deletes_exactly_the_orphan_and_publishes_one_event(
        env: Env, events: EventTap) -> None:
    org, orphan, replacement, row_b = await seed_incident(env)
    before = await env.row(row_b)

    code, first = env.cli_json("once", RECONCILER_MODE="enforce")
    assert code == 0, first
    kinds = {(d["instance_name"], d["kind"]) for d in first["drift"]}
    assert (orphan, "orphan_pending") in kinds
    assert first["actions"] == []
    assert set(env.sim.names()) == {orphan, replacement}

    code, second = env.cli_json("once", RECONCILER_MODE="enforce")
    assert code == 0, second
    assert [(a["instance_name"], a["action"], a["outcome"]) for a in second["actions"]] == [
        (orphan, "delete", "ok")]
    assert env.sim.names() == [replacement]
    assert ("DELETE", f"/instance/logout/{orphan}") in env.sim.requests
    assert not any(path.endswith(replacement) and method == "DELETE"
                   for method, path in env.sim.requests)

    published = await events.drain(expect=1)
    assert len(published) == 1
    event = published[0]
    assert list(event) == ["event_id", "type", "instance_name", "organization_id", "server",
                           "reason", "occurred_at", "source"]
    assert event["type"] == "instance.removed"
    assert event["instance_name"] == orphan
    assert event["organization_id"] == str(org)
    assert event["server"] == "default"
    assert event["reason"] == "duplicate_number"
    assert event["source"] == "evolution-reconciler"
    uuid.UUID(str(event["event_id"]))

    audit = [r for r in await env.audit() if r["outcome"] == "ok"]
    assert [(r["instance_name"], r["action"], r["reason"]) for r in audit] == [
        (orphan, "delete", "duplicate_number")]
    assert str(audit[0]["event_id"]) == event["event_id"]
    assert audit[0]["organization_id"] == org

    after = await env.row(row_b)
    assert dict(after) == dict(before)

    code, third = env.cli_json("once", RECONCILER_MODE="enforce")
    assert code == 0
    assert third["actions"] == []
    assert [d for d in third["drift"] if d["kind"] != "unmanaged"] == []
    assert await events.drain(expect=2, timeout=0.5) == published


async def test_dry_run_changes_nothing_outside_its_schema(env: Env, events: EventTap) -> None:
    _, orphan, replacement, _ = await seed_incident(env)
    disconnected = clinic_name()
    env.sim.add(disconnected, state="close", owner_jid="5511977776666@s.whatsapp.net",
                disconnection_code=401)
    row_c = await env.add_row(disconnected, status="connected")
    rows_before = [dict(r) for r in await env.all_rows()]

    for _ in range(3):
        code, out = env.cli_json("once")
        assert code == 0, out
    assert out["mode"] == "dry_run"
    assert {(a["instance_name"], a["action"], a["outcome"]) for a in out["actions"]} == {
        (orphan, "delete", "dry_run"), (disconnected, "mark_disconnected", "dry_run")}

    assert sorted(env.sim.names()) == sorted([orphan, replacement, disconnected])
    assert not [m for m, _ in env.sim.requests if m != "GET"]
    assert [dict(r) for r in await env.all_rows()] == rows_before
    assert (await env.row(row_c))["status"] == "connected"
    assert await events.drain(timeout=0.5) == []
    outcomes = {r["outcome"] for r in await env.audit()}
    assert outcomes == {"dry_run"}


async def test_plan_changes_and_records_nothing(env: Env) -> None:
    _, orphan, _, _ = await seed_incident(env)
    for _ in range(3):
        code, out = env.cli_json("plan", RECONCILER_MODE="enforce",
                                 RECONCILER_ORPHAN_CONFIRMATIONS="1")
        assert code == 0
        assert [(a["instance_name"], a["outcome"]) for a in out["actions"]] == [
            (orphan, "planned")]
    assert orphan in env.sim.names()
    assert await env.audit() == []
