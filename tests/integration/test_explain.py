"""`reconciler explain`: for each drift kind and each guard, its verdict is what the next pass does.

Each case builds the situation, asks `explain`, runs one real pass (`once` in process), and
compares the drift and the actions for that name. The re-check guard is not among them: it is the
point read right before the call, which no plan can foresee (explain says "at the call").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from reconciler.controller import Controller
from reconciler.explain import explain
from reconciler.names import instance_key
from reconciler.settings import load_settings
from reconciler.simulator import Simulator
from reconciler.wiring import open_controller
from tests.integration.conftest import API_KEY, Env, clinic_name, controller_for

OLD = timedelta(days=3)


async def keepers(env: Env, n: int, sim: Simulator | None = None) -> list[str]:
    names = []
    for i in range(n):
        name = clinic_name(age=timedelta(days=30))
        (sim or env.sim).add(name, state="open", owner_jid=f"55119100{i:05d}@s.whatsapp.net")
        await env.add_row(name)
        names.append(name)
    return names


async def verdict_then_pass(controller: Controller, name: str) -> dict[str, object]:
    [explained] = await verdicts_then_pass(controller, name)
    return explained


async def verdicts_then_pass(controller: Controller, *names: str) -> list[dict[str, object]]:
    """explain each name, then one pass: the drift and the actions must be the same."""
    said = [await explain(controller, name) for name in names]
    result = await controller.run_pass()
    assert result.plan is not None
    for name, explained in zip(names, said, strict=True):
        key = instance_key(name)
        done = {(a.server, a.kind.value, a.blocked_by.value if a.blocked_by else None, o.value)
                for a, o, _ in result.report.outcomes if instance_key(a.instance_name) == key}
        assert {(a["server"], a["action"], a["guard"],
                 "ok" if a["outcome"] == "planned" else a["outcome"])
                for a in explained["actions"]} == done, (explained, done)  # type: ignore[attr-defined, index]
        drift = {(d.server, d.kind.value) for d in result.plan.drift if d.instance_name == name}
        assert {(d["server"], d["kind"]) for d in explained["drift"]} == drift  # type: ignore[attr-defined, index]
    return said


def kinds(explained: dict[str, object]) -> set[str]:
    return {d["kind"] for d in explained["drift"]}  # type: ignore[attr-defined, index]


def guards(explained: dict[str, object]) -> list[str | None]:
    return [a["guard"] for a in explained["actions"]]  # type: ignore[attr-defined, index]


def words(explained: dict[str, object]) -> str:
    return "\n".join(explained["verdict"])  # type: ignore[arg-type]


async def test_orphan_pending_then_orphan_deleted_with_its_event_in_the_audit(env: Env) -> None:
    await keepers(env, 3)
    orphan = clinic_name(age=OLD)
    env.sim.add(orphan, state="close")
    async with controller_for(env, env.sim, RECONCILER_ORPHAN_CONFIRMATIONS="2") as controller:
        first = await verdict_then_pass(controller, orphan)
        assert kinds(first) == {"orphan_pending"}
        assert "orphan in 1/2 passes" in words(first)
        second = await verdict_then_pass(controller, orphan)
        assert kinds(second) == {"orphan"} and guards(second) == [None]
        [checks] = [a["guard_checks"] for a in second["actions"]]  # type: ignore[attr-defined]
        assert {c["result"] for c in checks} == {"passed", "at the call"}
        after = await explain(controller, orphan)
    assert orphan not in env.sim.names()
    [delete] = [r for r in after["audit"] if r["action"] == "delete"]  # type: ignore[attr-defined]
    assert delete["outcome"] == "ok" and delete["event_id"]
    assert f"event_id {delete['event_id']}" in words(after)
    assert [m["orphan_passes"] for m in second["memory"]] == [1]  # type: ignore[attr-defined]


async def test_the_cli_explains_in_table_and_json_and_knows_the_unknown(env: Env) -> None:
    await keepers(env, 1)
    orphan = clinic_name(age=OLD)
    env.sim.add(orphan, state="close")
    assert env.cli("once", RECONCILER_MODE="enforce").returncode == 0
    code, out = env.cli_json("explain", orphan)
    assert code == 0
    assert [m["orphan_passes"] for m in out["memory"]] == [1]
    assert [(a["action"], a["outcome"]) for a in out["actions"]] == [("delete", "dry_run")]
    proc = env.cli("explain", orphan)
    assert proc.returncode == 0, proc.stderr
    assert "orphan_pending" not in proc.stdout and "orphan" in proc.stdout
    assert "guard checks: mode dry_run, ownership passed" in proc.stdout
    code, unknown = env.cli_json("explain", "clinic-nobody")
    assert code == 0 and unknown["known"] is False
    assert unknown["verdict"][0].startswith("unknown:")
    evil = "clinic-\n\x1b[31mforged"
    proc = env.cli("explain", evil)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout and "\\x1b" in proc.stdout


async def test_status_drift_kinds(env: Env) -> None:
    down, back, gone = clinic_name(), clinic_name(), clinic_name()
    env.sim.add(down, state="close", owner_jid="5511977776666@s.whatsapp.net",
                disconnection_code=401, disconnection_object={"error": {
                    "output": {"statusCode": 401}}})
    env.sim.add(back, state="open", owner_jid="5511966665555@s.whatsapp.net")
    await env.add_row(down, status="connected")
    await env.add_row(back, status="disconnected")
    await env.add_row(gone, status="connected")
    async with controller_for(env, env.sim) as controller:
        verdicts = await verdicts_then_pass(controller, down, back, gone)
        synced = await verdict_then_pass(controller, back)
    assert [kinds(v) for v in verdicts] == [{"disconnected"}, {"reconnected"}, {"missing"}]
    assert "in sync" in words(synced)


async def test_reconnected_and_duplicates_and_unmanaged(env: Env) -> None:
    back = clinic_name()
    env.sim.add(back, state="open", owner_jid="5511966665555@s.whatsapp.net")
    await env.add_row(back, status="pending")
    twice = clinic_name()
    env.sim.add(twice, state="open", owner_jid="5511955554444@s.whatsapp.net")
    await env.add_row(twice)
    await env.add_row(twice)
    desired_twin = clinic_name()
    env.sim.add(desired_twin, state="open", owner_jid="5511944443333@s.whatsapp.net")
    await env.add_row(desired_twin)
    stale_twin = clinic_name(age=OLD)
    env.sim.add(stale_twin, state="open", owner_jid="5511944443333@s.whatsapp.net")
    env.sim.add("marketing-bot", state="open")
    async with controller_for(env, env.sim) as controller:
        stale, back_, twice_, unmanaged = await verdicts_then_pass(
            controller, stale_twin, back, twice, "marketing-bot")
    assert "orphan" in kinds(stale)
    assert [a["reason"] for a in stale["actions"]] == ["duplicate_number"]  # type: ignore[attr-defined]
    assert kinds(back_) == {"reconnected"}
    assert kinds(twice_) == {"duplicate_row"}
    assert kinds(unmanaged) == {"unmanaged"} and "never touched" in words(unmanaged)


async def test_guards_held_by_the_planner(env: Env) -> None:
    await keepers(env, 4)
    kept, claimed, a, b = (clinic_name(age=OLD) for _ in range(4))
    for name in (kept, claimed, a, b):
        env.sim.add(name, state="close")
    await env.add_row(None, config={"instance_name": [claimed]})
    async with controller_for(env, env.sim, RECONCILER_PROTECTED=kept,
                              RECONCILER_MAX_DELETIONS="1") as controller:
        verdicts = await verdicts_then_pass(controller, kept, claimed, a)
    assert [guards(v) for v in verdicts] == [["protected"], ["invalid_row"], ["max_deletions"]]
    assert "--allow-mass-deletion" in words(verdicts[2])
    env.sim.add(clinic_name(age=OLD), state="close")  # 3 of 9 managed: above a quarter
    async with controller_for(env, env.sim, RECONCILER_PROTECTED=kept,
                              RECONCILER_MAX_DELETION_FRACTION="0.25") as controller:
        assert guards(await verdict_then_pass(controller, a)) == ["max_fraction"]


async def test_mass_loss_guards_and_the_restart_guard(env: Env) -> None:
    names = await keepers(env, 4)
    async with controller_for(env, env.sim) as controller:
        await controller.run_pass()
        await env.sql(f"DELETE FROM {env.names.integrations_table} WHERE config->>'instance_name'"
                      " = ANY($1::text[])", names[1:])
        collapsed = await verdict_then_pass(controller, names[1])
        assert guards(collapsed) == ["collapse"]
        await env.sql(f"DELETE FROM {env.names.integrations_table}")
        assert guards(await verdict_then_pass(controller, names[0])) == ["empty_desired"]
    await env.sql(f"DELETE FROM \"{env.names.schema}\".pass_counts")
    for name in names:
        await env.add_row(name)
        env.sim.set_state(name, "connecting", stored_status="open")
    async with controller_for(env, env.sim, RECONCILER_DISCONNECT_AFTER_SECONDS="0") as controller:
        restart = await verdict_then_pass(controller, names[0])
    assert restart["degraded_servers"] == ["default"] and restart["actions"] == []
    assert "restart guard" in words(restart)


@asynccontextmanager
async def two_servers(env: Env, tmp_path: Path) -> AsyncIterator[tuple[Controller, Simulator]]:
    async with Simulator(api_key=API_KEY, client_name="evo-b") as b:
        (tmp_path / "key").write_text(API_KEY)
        config = tmp_path / "reconciler.toml"
        config.write_text(
            f'[[servers]]\nname = "br-1"\nurl = "{env.sim.url}"\napi_key_file = "{tmp_path}/key"\n'
            f'[[servers]]\nname = "br-2"\nurl = "{b.url}"\napi_key_file = "{tmp_path}/key"\n')
        environ = {k: v for k, v in env.environ(
            RECONCILER_CONFIG=str(config), RECONCILER_MODE="enforce",
            RECONCILER_ORPHAN_CONFIRMATIONS="1").items()
            if k.startswith("RECONCILER_") and k not in ("RECONCILER_EVOLUTION_URL",
                                                         "RECONCILER_EVOLUTION_API_KEY")}
        async with open_controller(load_settings(environ)) as controller, \
                controller.leadership.leading():
            yield controller, b


async def test_duplicate_name_and_an_incomplete_read(env: Env, tmp_path: Path) -> None:
    async with two_servers(env, tmp_path) as (controller, b):
        await keepers(env, 2)
        await keepers(env, 2, b)
        both = clinic_name()
        env.sim.add(both, state="open", owner_jid="5511933332222@s.whatsapp.net")
        b.add(both, state="close")
        await env.add_row(both)
        assert kinds(await verdict_then_pass(controller, both)) == {"duplicate_name"}
        orphan = clinic_name(age=OLD)
        env.sim.add(orphan, state="close")
        b.fault("fetchInstances", status=500)
        blind = await verdict_then_pass(controller, orphan)
    assert guards(blind) == ["incomplete_read"]
    assert [e["server"] for e in blind["errors"]] == ["br-2"]  # type: ignore[attr-defined]
    assert json.dumps(blind)
