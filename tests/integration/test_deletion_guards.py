"""Every deletion guard of SPEC 4.3, end to end: the CLI tries to delete wrongly and must not."""

from __future__ import annotations

from datetime import timedelta

from tests.integration.conftest import Env, EventTap, clinic_name

ENFORCE = {"RECONCILER_MODE": "enforce", "RECONCILER_ORPHAN_CONFIRMATIONS": "1"}


async def keepers(env: Env, n: int) -> list[str]:
    names = []
    for i in range(n):
        name = clinic_name(age=timedelta(days=30))
        env.sim.add(name, state="open", owner_jid=f"55119000{i:05d}@s.whatsapp.net")
        await env.add_row(name)
        names.append(name)
    return names


def orphans(env: Env, n: int) -> list[str]:
    names = [clinic_name(age=timedelta(days=3)) for _ in range(n)]
    for name in names:
        env.sim.add(name, state="close")
    return names


def deletes_sent(env: Env) -> list[str]:
    return [p for m, p in env.sim.requests if m == "DELETE"]


async def guards_audited(env: Env) -> set[tuple[str, str, str]]:
    return {(r["action"], r["outcome"], r["guard"]) for r in await env.audit()}


async def test_protected_instances_are_never_deleted(env: Env) -> None:
    await keepers(env, 4)
    [kept] = orphans(env, 1)
    code, out = env.cli_json("once", RECONCILER_PROTECTED=f"{kept},^nothing-",
                             RECONCILER_MAX_DELETION_FRACTION="1",
                             **ENFORCE)
    assert code == 0, out
    assert [(a["outcome"], a["guard"]) for a in out["actions"]] == [("blocked", "protected")]
    assert kept in env.sim.names()
    assert deletes_sent(env) == []


async def test_max_deletions_holds_every_delete_until_overridden(env: Env) -> None:
    await keepers(env, 10)
    doomed = orphans(env, 3)
    code, out = env.cli_json("once", RECONCILER_MAX_DELETIONS="2", **ENFORCE)
    assert code == 3, out
    assert {(a["outcome"], a["guard"]) for a in out["actions"]} == {("blocked", "max_deletions")}
    assert deletes_sent(env) == []
    assert ("delete", "blocked", "max_deletions") in await guards_audited(env)

    code, out = env.cli_json("once", "--allow-mass-deletion", RECONCILER_MAX_DELETIONS="2",
                             **ENFORCE)
    assert code == 0, out
    assert not set(doomed) & set(env.sim.names())


async def test_max_fraction_protects_small_servers(env: Env) -> None:
    """Beyond the one deletion that is always within the fraction (SPEC 4.3 rule 6)."""
    await keepers(env, 1)
    doomed = orphans(env, 2)
    code, out = env.cli_json("once", RECONCILER_MAX_DELETION_FRACTION="0.25", **ENFORCE)
    assert code == 3, out
    assert [(a["outcome"], a["guard"]) for a in out["actions"]] == [
        ("blocked", "max_fraction")] * 2
    assert set(doomed) <= set(env.sim.names())


async def test_an_empty_desired_set_deletes_nothing(env: Env) -> None:
    doomed = orphans(env, 2)
    code, out = env.cli_json("once", RECONCILER_MAX_DELETION_FRACTION="1", **ENFORCE)
    assert code == 3, out
    assert {a["guard"] for a in out["actions"]} == {"empty_desired"}
    assert sorted(env.sim.names()) == sorted(doomed)
    assert deletes_sent(env) == []


async def test_a_collapsed_desired_set_deletes_and_marks_nothing(env: Env) -> None:
    """Most rows vanish at once (a truncated table, a wrong database): hold everything back."""
    names = await keepers(env, 6)
    code, out = env.cli_json("once", RECONCILER_MAX_DELETION_FRACTION="1", **ENFORCE)
    assert code == 0, out
    await env.sql(f"DELETE FROM {env.names.integrations_table} WHERE config->>'instance_name'"
                  " <> $1", names[0])
    for _ in range(2):
        code, out = env.cli_json("once", RECONCILER_MAX_DELETION_FRACTION="1", **ENFORCE)
        assert code == 3, out
        assert {a["guard"] for a in out["actions"]} == {"collapse"}
    assert sorted(env.sim.names()) == sorted(names)
    assert deletes_sent(env) == []


async def test_duplicate_number_between_desired_instances_is_flagged_once(
        env: Env, events: EventTap) -> None:
    first, second = clinic_name(), clinic_name()
    for name in (first, second):
        env.sim.add(name, state="open", owner_jid="5511988887777:12@s.whatsapp.net")
        await env.add_row(name)
    for _ in range(3):
        code, out = env.cli_json("once", **ENFORCE)
        assert code == 0, out
    assert {d["instance_name"] for d in out["drift"] if d["kind"] == "duplicate_number"} == {
        first, second}
    published = await events.drain(expect=1)
    assert [(e["type"], e["reason"]) for e in published] == [
        ("instance.duplicate", "duplicate_number")]
    assert deletes_sent(env) == []


async def test_a_server_restart_marks_nobody_disconnected(env: Env) -> None:
    """Every instance `connecting` at once is a restart, not four clinics losing their phones."""
    names = await keepers(env, 4)
    for name in names:
        env.sim.set_state(name, "connecting", stored_status="open")
    for _ in range(2):
        code, out = env.cli_json("once", RECONCILER_DISCONNECT_AFTER_SECONDS="0.001", **ENFORCE)
        assert code == 0, out
    assert out["degraded_servers"] == ["default"]
    assert out["actions"] == []
    assert {r["status"] for r in await env.all_rows()} == {"connected"}
