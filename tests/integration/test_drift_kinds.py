"""Each drift kind of SPEC 4.1, end to end through `reconciler once` in enforce mode."""

from __future__ import annotations

import uuid
from datetime import timedelta

from tests.integration.conftest import Env, EventTap, clinic_name

ENFORCE = {"RECONCILER_MODE": "enforce"}


def drift_of(out: dict[str, object], name: str) -> set[str]:
    return {d["kind"] for d in out["drift"] if d["instance_name"] == name}  # type: ignore[attr-defined, index]


async def test_terminal_disconnect_is_marked_at_once(env: Env, events: EventTap) -> None:
    name = clinic_name()
    env.sim.add(name, state="close", owner_jid="5511977776666@s.whatsapp.net",
                disconnection_code=401, disconnection_object={
                    "error": {"data": {"tag": "stream:error", "attrs": {"code": "401"},
                                       "content": [{"tag": "conflict",
                                                    "attrs": {"type": "device_removed"}}]},
                              "output": {"statusCode": 401}}})
    row = await env.add_row(name, status="connected")
    code, out = env.cli_json("once", **ENFORCE)
    assert code == 0, out
    assert "disconnected" in drift_of(out, name)
    record = await env.row(row)
    assert (record["status"], record["disconnect_reason"]) == ("disconnected", "device_removed")
    assert record["updated_at"] > record["created_at"]
    [event] = await events.drain(expect=1)
    assert (event["type"], event["reason"]) == ("instance.disconnected", "device_removed")
    assert name in env.sim.names()


async def test_transient_disconnect_waits_for_confirmation(env: Env) -> None:
    name = clinic_name()
    env.sim.add(name, state="connecting", stored_status="open",
                owner_jid="5511977776666@s.whatsapp.net")
    row = await env.add_row(name, status="connected")
    code, out = env.cli_json("once", **ENFORCE)
    assert code == 0
    assert out["actions"] == []
    assert (await env.row(row))["status"] == "connected"
    code, out = env.cli_json("once", RECONCILER_DISCONNECT_AFTER_SECONDS="0.001", **ENFORCE)
    assert code == 0
    record = await env.row(row)
    assert (record["status"], record["disconnect_reason"]) == ("disconnected", "connection_closed")


async def test_reconnected_only_when_open_and_paired(env: Env, events: EventTap) -> None:
    paired, unpaired = clinic_name(), clinic_name()
    env.sim.add(paired, state="open", owner_jid="5511966665555@s.whatsapp.net")
    env.sim.add(unpaired, state="open", owner_jid=None)
    row_paired = await env.add_row(paired, status="disconnected")
    row_unpaired = await env.add_row(unpaired, status="pending")
    code, out = env.cli_json("once", **ENFORCE)
    assert code == 0, out
    record = await env.row(row_paired)
    assert (record["status"], record["disconnect_reason"]) == ("connected", None)
    assert (await env.row(row_unpaired))["status"] == "pending"
    [event] = await events.drain(expect=1)
    assert (event["type"], event["reason"], event["instance_name"]) == (
        "instance.connected", "reconnected", paired)


async def test_missing_is_marked_once(env: Env, events: EventTap) -> None:
    name = clinic_name()
    row = await env.add_row(name, status="connected")
    for _ in range(4):
        code, out = env.cli_json("once", **ENFORCE)
        assert code == 0, out
    assert "missing" in drift_of(out, name)
    record = await env.row(row)
    assert (record["status"], record["disconnect_reason"]) == ("disconnected", "instance_missing")
    published = await events.drain(expect=1)
    assert [(e["type"], e["reason"]) for e in published] == [
        ("instance.missing", "instance_missing")]


async def test_unmanaged_and_young_instances_are_left_alone(env: Env) -> None:
    young = clinic_name(age=timedelta(seconds=1))
    env.sim.add("marketing-bot", state="open")
    env.sim.add(young, state="connecting")
    for _ in range(3):
        code, out = env.cli_json("once", RECONCILER_ORPHAN_GRACE_SECONDS="3600", **ENFORCE)
        assert code == 0, out
    assert drift_of(out, "marketing-bot") == {"unmanaged"}
    assert drift_of(out, young) == {"orphan_pending"}
    assert sorted(env.sim.names()) == sorted(["marketing-bot", young])
    assert not [m for m, _ in env.sim.requests if m == "DELETE"]


async def test_disabled_row_owns_its_instance_and_keeps_its_status(env: Env) -> None:
    name = clinic_name()
    env.sim.add(name, state="close", disconnection_code=401)
    row = await env.add_row(name, status="connected", enabled=False)
    for _ in range(3):
        code, _ = env.cli_json("once", **ENFORCE)
        assert code == 0
    assert name in env.sim.names()
    assert (await env.row(row))["status"] == "connected"


async def test_broken_rows_are_reported_and_never_cause_a_delete(env: Env) -> None:
    name = clinic_name()
    env.sim.add(name, state="open", owner_jid="5511944443333@s.whatsapp.net")
    await env.add_row(None, config={"instance_name": name})
    await env.add_row(None, config="not an object")
    await env.add_row(None, config=["clinic"])
    await env.add_row(None, config={"instance_name": ""})
    await env.add_row(None, config={"instance_name": 42})
    for _ in range(3):
        code, out = env.cli_json("once", **ENFORCE)
        assert code == 0, out
    assert out["invalid_rows"] == 4
    assert name in env.sim.names()


async def test_duplicate_rows_are_flagged(env: Env, events: EventTap) -> None:
    org = uuid.uuid4()
    name = clinic_name(org)
    env.sim.add(name, state="open", owner_jid="5511944443333@s.whatsapp.net")
    await env.add_row(name, org=org)
    await env.add_row(name, org=org)
    for _ in range(2):
        code, out = env.cli_json("once", **ENFORCE)
        assert code == 0, out
    assert "duplicate_row" in drift_of(out, name)
    published = await events.drain(expect=1)
    assert [(e["type"], e["reason"]) for e in published] == [
        ("instance.duplicate", "duplicate_row")]
