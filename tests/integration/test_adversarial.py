"""Adversarial end-to-end tests: names, listings, rows, timing and secrets chosen to make the
daemon do harm. Each asserts the harm does not happen (or is marked xfail with the bug)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest

from reconciler.model import ActionKind, DriftKind, Outcome
from reconciler.simulator import Simulator, device_removed_object
from tests.conftest import DbNames
from tests.integration.conftest import API_KEY, Env, EventTap, clinic_name, controller_for

ENFORCE = {"RECONCILER_MODE": "enforce", "RECONCILER_ORPHAN_CONFIRMATIONS": "1"}
TENANTS = {"RECONCILER_MANAGED_PATTERN": "^tenant-.*$"}
_UNRESERVED_OR_ESCAPE = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+")
_numbers = iter(range(10_000_000))


def jid() -> str:
    return f"55119{next(_numbers):08d}@s.whatsapp.net"


def deletes(sim: Simulator) -> list[str]:
    return [path for method, path in sim.requests if method == "DELETE"]


async def add_keeper(env: Env) -> str:
    """A desired, healthy instance: without one the `empty_desired` guard holds every delete."""
    keeper = clinic_name(age=timedelta(days=9))
    env.sim.add(keeper, state="open", owner_jid=jid())
    await env.add_row(keeper, status="connected")
    return keeper


async def statuses(env: Env) -> dict[uuid.UUID, tuple[str, str | None]]:
    return {r["id"]: (r["status"], r["disconnect_reason"]) for r in await env.all_rows()}


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def listed_v2_items(sim: Simulator) -> list[dict[str, Any]]:
    """The simulator's own unfiltered listing, to build faulty listings from real items."""
    answer = httpx.get(f"{sim.url}/instance/fetchInstances", headers={"apikey": API_KEY})
    answer.raise_for_status()
    items: list[dict[str, Any]] = answer.json()
    return items


class RawPaths:
    """ASGI middleware recording the request target as sent (`raw_path`), before decoding."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["raw_path"].decode("ascii")))
        await self.app(scope, receive, send)


@pytest.fixture
def raw_sim() -> Iterator[tuple[Simulator, RawPaths]]:
    simulator = Simulator(api_key=API_KEY, version="2.3.6")
    recorder = RawPaths(simulator.app)
    simulator.app = recorder  # type: ignore[assignment]
    simulator.start_in_thread()
    yield simulator, recorder
    simulator.stop_thread()


@pytest.fixture
async def raw_env(database_url: str, redis_url: str, db_names: DbNames, channel: str,
                  raw_sim: tuple[Simulator, RawPaths]) -> AsyncIterator[tuple[Env, RawPaths]]:
    yield Env(database_url, redis_url, db_names, channel, raw_sim[0]), raw_sim[1]


# --- 1. names that need URL-encoding ----------------------------------------------------------

# Each orphan has a desired "trap" sibling: the instance a path that was not (or was wrongly)
# encoded would reach instead (`%41` decodes to `A`, a second decode turns `%20` into a space,
# `?` and `#` cut the path, a split at `/` keeps the first segment).
WEIRD_ORPHANS = ("tenant-a b", "tenant-a/b", "tenant-100%41", "tenant-q?x=1&y=2", "tenant-h#frag",
                 "tenant-ção-日本", "tenant-pct%20")
TRAPS = ("tenant-a", "tenant-100A", "tenant-q", "tenant-h", "tenant-ção", "tenant-pct ")
WEIRD_DESIRED = ("tenant-keep me/%2F?#ü ", "tenant-sp ")
"""Desired, and as weird; `tenant-sp` (no space) is on the server too, and is the same instance
(names differing only by surrounding spaces are one: Evolution 2.4 trims them at create)."""


def instance_of(path: str, action: str) -> str | None:
    prefix = f"/instance/{action}/"
    return unquote(path[len(prefix):]) if path.startswith(prefix) else None


async def test_names_needing_encoding_delete_exactly_the_orphans(
        raw_env: tuple[Env, RawPaths], events: EventTap) -> None:
    env, raw = raw_env
    await add_keeper(env)
    orphans = WEIRD_ORPHANS
    env.sim.add("tenant-sp", state="close")
    for name in orphans:
        live = name == "tenant-a/b"  # logged out before its delete: that path is encoded too
        env.sim.add(name, state="open" if live else "close", owner_jid=jid() if live else None)
    desired = (*TRAPS, *WEIRD_DESIRED)
    for name in desired:
        env.sim.add(name, state="open", owner_jid=jid())
        await env.add_row(name)
    before = await statuses(env)

    async with controller_for(env, env.sim, **TENANTS) as controller:
        first = await controller.run_pass()
        assert not first.failed, first.errors
        second = await controller.run_pass()
        assert not second.failed, second.errors

    for _, path in raw.seen:
        if path.startswith("/instance/") and path.count("/") > 2:
            segment = path.split("/", 3)[3]
            assert _UNRESERVED_OR_ESCAPE.fullmatch(segment), f"not encoded as one segment: {path}"
    writes = [(m, p) for m, p in raw.seen if m == "DELETE"]
    deleted = [n for _, p in writes if (n := instance_of(p, "delete")) is not None]
    logged_out = [n for _, p in writes if (n := instance_of(p, "logout")) is not None]
    assert sorted(deleted) == sorted(orphans)
    assert logged_out == ["tenant-a/b"]
    assert len(writes) == len(orphans) + 1
    assert not set(orphans) & set(env.sim.names())
    assert {*desired, "tenant-sp"} <= set(env.sim.names())
    assert second.report.outcomes == []
    assert await statuses(env) == before
    published = await events.drain(expect=len(orphans))
    assert sorted((e["type"], e["instance_name"]) for e in published) == sorted(
        ("instance.removed", n) for n in orphans)
    audited = {(r["instance_name"], r["action"], r["outcome"]) for r in await env.audit()}
    assert audited == {(n, "delete", "ok") for n in orphans}


async def test_names_needing_encoding_are_unmanaged_by_default(env: Env) -> None:
    await add_keeper(env)
    weird = (*WEIRD_ORPHANS, *TRAPS, *WEIRD_DESIRED)
    for name in weird:
        env.sim.add(name, state="close")
    await env.add_row(WEIRD_DESIRED[0])
    async with controller_for(env, env.sim) as controller:
        for _ in range(2):
            result = await controller.run_pass()
            assert not result.failed, result.errors
            assert result.report.outcomes == []
    assert result.plan is not None
    unmanaged = {d.instance_name for d in result.plan.drift if d.kind is DriftKind.UNMANAGED}
    assert unmanaged == set(weird)
    assert set(weird) <= set(env.sim.names())
    assert deletes(env.sim) == []


async def test_a_nameless_instance_is_someone_elses_and_stops_nothing(env: Env) -> None:
    """Nameless instances exist in the wild (CONTRACT 9, #1151): unmanaged, not a broken read."""
    await add_keeper(env)
    env.sim.add("", state="close")
    env.sim.add("   ", state="open", owner_jid=jid())
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    async with controller_for(env, env.sim) as controller:
        result = await controller.run_pass()
    assert not result.failed, result.errors
    assert result.plan is not None
    assert {d.instance_name for d in result.plan.drift if d.kind is DriftKind.UNMANAGED} == {
        "", "   "}
    assert {"", "   "} <= set(env.sim.names())
    assert [instance_of(p, "delete") for p in deletes(env.sim)] == [orphan]


# --- 2. absurdly long names -------------------------------------------------------------------


def noise(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """Incompressible text: a long name PostgreSQL cannot squeeze into a b-tree entry."""
    return "".join(random.choices(alphabet, k=n))


async def test_absurdly_long_names_complete_the_pass_and_delete_nothing_wrongly(
        env: Env) -> None:
    keeper = await add_keeper(env)
    long_desired = f"clinic-{uuid.uuid4()}-{'7' * 4950}"
    long_unmanaged = "ext-" + noise(5000)
    long_orphan = f"clinic-{uuid.uuid4()}-{noise(4950, string.digits)}"
    long_missing = f"clinic-{uuid.uuid4()}-{'3' * 4950}"
    plain_orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(long_desired, state="open", owner_jid=jid())
    env.sim.add(long_unmanaged, state="open", owner_jid=jid())
    env.sim.add(long_orphan, state="close")
    env.sim.add(plain_orphan, state="close")
    desired_row = await env.add_row(long_desired)
    await env.add_row(long_missing)
    await env.add_row(None, config={"instance_name": keeper, "notes": "n" * 100_000})

    for _ in range(2):
        proc = env.cli("once", "--output", "json", **ENFORCE)
        assert proc.returncode in (0, 1), proc.stderr
        assert "Traceback" not in proc.stderr
        assert "Traceback" not in proc.stdout
    left = set(env.sim.names())
    assert {keeper, long_desired, long_unmanaged} <= left
    assert (await env.row(desired_row))["status"] == "connected"
    touched = {instance_of(p, "delete") for p in deletes(env.sim)}
    assert touched <= {long_orphan, plain_orphan}


async def test_one_unindexable_instance_name_does_not_stop_every_other_action(env: Env) -> None:
    """v1 servers cap no name; a single absurd one must not freeze convergence for everyone."""
    await add_keeper(env)
    env.sim.add(f"clinic-{uuid.uuid4()}-{noise(4950, string.digits)}", state="close")
    plain_orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(plain_orphan, state="close")
    gone = await env.add_row(clinic_name())
    async with controller_for(env, env.sim) as controller:
        for _ in range(2):
            await controller.run_pass()
    assert plain_orphan not in env.sim.names()
    assert (await env.row(gone))["disconnect_reason"] == "instance_missing"


# --- 3. a listing with one malformed item ---------------------------------------------------

MALFORMED: dict[str, Any] = {
    "missing name": lambda item: {k: v for k, v in item.items() if k != "name"},
    "null name": lambda item: {**item, "name": None},
    "numeric name": lambda item: {**item, "name": 42},
    "string item": lambda item: item["name"],
    "null item": lambda item: None,
    "list item": lambda item: [item],
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_one_malformed_item_makes_the_whole_listing_an_error(
        env: Env, events: EventTap, kind: str) -> None:
    """The faulty listing holds the orphan and a broken copy of a desired instance: a parser that
    skipped the broken item would delete the orphan and mark every desired row missing."""
    keeper = await add_keeper(env)
    other = clinic_name()
    env.sim.add(other, state="open", owner_jid=jid())
    await env.add_row(other)
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    items = {item["name"]: item for item in listed_v2_items(env.sim)}
    env.sim.fault("fetchInstances", status=200,
                  body=[items[orphan], MALFORMED[kind](items[keeper])])
    before = await statuses(env)
    async with controller_for(env, env.sim) as controller:
        for _ in range(2):
            result = await controller.run_pass()
            assert [e.stage for e in result.errors] == ["read_observed"], result.errors
            assert [o for _, o, _ in result.report.outcomes if o is Outcome.OK] == []
    assert deletes(env.sim) == []
    assert orphan in env.sim.names()
    assert await statuses(env) == before
    assert [r for r in await env.audit() if r["outcome"] == "ok"] == []
    assert await events.drain(timeout=0.2) == []


# --- 4. a listing that suddenly holds nothing ------------------------------------------------


async def test_a_listing_that_suddenly_empties_marks_and_deletes_nothing(
        env: Env, events: EventTap) -> None:
    """An empty list is a well-formed answer, so the read succeeds (not exit 1); but every managed
    instance vanishing at once is the collapse of 4.3 (observed 3 -> 0, more than half), which
    also holds back `mark_missing`. The pass completes with a blast-radius guard holding actions
    back: exit 3 (SPEC 8). The baseline stays put while the guard protects those rows, so the next
    pass holds them again instead of comparing with the collapsed count."""
    names = [clinic_name() for _ in range(3)]
    for name in names:
        env.sim.add(name, state="open", owner_jid=jid())
        await env.add_row(name)
    code, out = env.cli_json("once", **ENFORCE)
    assert (code, out["actions"]) == (0, []), out
    before = await statuses(env)

    env.sim.fault("fetchInstances", status=200, body=[])
    seen = len(env.sim.requests)
    for _ in range(2):
        code, out = env.cli_json("once", **ENFORCE)
        assert code == 3, out
        assert out["servers"]["default"]["ok"] is True
        assert sorted((a["instance_name"], a["action"], a["outcome"], a["guard"])
                      for a in out["actions"]) == sorted(
            (n, "mark_missing", "blocked", "collapse") for n in names)
        assert await statuses(env) == before
    naming = [(m, p) for m, p in env.sim.requests[seen:]
              if any(n in unquote(p) for n in names)]
    assert naming == [], "a request named an instance no server lists"
    assert deletes(env.sim) == []
    assert sorted(env.sim.names()) == sorted(names)
    assert await events.drain(timeout=0.2) == []


# --- 5. a listing that never answers ---------------------------------------------------------


async def test_a_hanging_listing_fails_the_pass_in_bounded_time(env: Env) -> None:
    await add_keeper(env)
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    before = await statuses(env)
    env.sim.fault("fetchInstances", hang=True)
    started = time.monotonic()
    proc = env.cli("once", "--output", "json", timeout=60, RECONCILER_HTTP_TIMEOUT_SECONDS="1",
                   **ENFORCE)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert elapsed < 20, f"a 1 s timeout took {elapsed:.1f} s to fail the pass"
    assert "Traceback" not in proc.stderr
    assert deletes(env.sim) == []
    assert orphan in env.sim.names()
    assert await statuses(env) == before


# --- 6. a delete that fails ------------------------------------------------------------------


@pytest.mark.parametrize("fault", [
    {"status": 500, "body": {"status": 500, "error": "Internal Server Error",
                             "response": {"message": ["Can't reach database server"]}}},
    {"hang": True},
], ids=["http-500", "hang"])
async def test_a_failed_delete_is_audited_and_retried_only_after_backoff(
        env: Env, events: EventTap, fault: dict[str, Any]) -> None:
    await add_keeper(env)
    orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(orphan, state="close")
    env.sim.fault("delete", **fault)
    async with controller_for(env, env.sim, RECONCILER_HTTP_TIMEOUT_SECONDS="1") as controller:
        first = await controller.run_pass()
        assert [(a.kind, a.instance_name, o) for a, o, _ in first.report.outcomes] == [
            (ActionKind.DELETE, orphan, Outcome.FAILED)]
        assert first.failed
        [row] = [r for r in await env.audit() if r["action"] == "delete"]
        assert (row["instance_name"], row["outcome"]) == (orphan, "failed")
        assert row["error"], "a failed delete is audited with its error"
        assert row["event_id"] is None
        assert orphan in env.sim.names()
        assert await events.drain(timeout=0.2) == []

        sent = len(deletes(env.sim))
        second = await controller.run_pass()
        assert len(deletes(env.sim)) == sent, "retried before its backoff elapsed"
        assert [o for a, o, _ in second.report.outcomes if a.kind is ActionKind.DELETE] == []
        assert orphan in env.sim.names()

        env.sim.clear_faults()
        moved = await env.sql(
            f'UPDATE "{env.names.schema}".observations SET next_delete_at = now()'
            " - interval '1 second' WHERE instance_name = $1 AND next_delete_at > now()", orphan)
        assert moved == "UPDATE 1", "the backoff is remembered"
        third = await controller.run_pass()
        assert not third.failed, third.errors
    assert orphan not in env.sim.names()
    published = await events.drain(expect=1)
    assert [(e["type"], e["instance_name"]) for e in published] == [("instance.removed", orphan)]


# --- 7. the application changes a row between the daemon's read and its update ----------------


async def test_a_status_changed_by_the_application_mid_pass_is_not_overwritten(
        env: Env, events: EventTap) -> None:
    await add_keeper(env)
    name = clinic_name()
    env.sim.add(name, state="close", owner_jid=jid(), disconnection_code=401,
                disconnection_object=device_removed_object(datetime.now(UTC)))
    row = await env.add_row(name, status="connected")
    env.sim.fault("fetchInstances", delay=1.5, times=1)
    async with controller_for(env, env.sim) as controller:
        async with anyio.create_task_group() as tg:
            async def application_rescans_the_qr() -> None:
                await wait_until(lambda: any(p.startswith("/instance/fetchInstances")
                                             for _, p in env.sim.requests))
                await env.sql(f"UPDATE {env.names.integrations_table} SET status = 'pending',"
                              " updated_at = now() WHERE id = $1", row)

            tg.start_soon(application_rescans_the_qr)
            first = await controller.run_pass()
        assert not first.failed, first.errors
        assert first.plan is not None
        assert [(a.kind, a.expected_status) for a in first.plan.actions] == [
            (ActionKind.MARK_DISCONNECTED, "connected")], "the window was not hit"
        record = await env.row(row)
        assert (record["status"], record["disconnect_reason"]) == ("pending", None)
        assert first.report.outcomes == []
        assert [r for r in await env.audit() if r["outcome"] == "ok"] == []
        assert await events.drain(timeout=0.2) == []

        env.sim.set_state(name, "open")
        second = await controller.run_pass()
        assert not second.failed, second.errors
    record = await env.row(row)
    assert (record["status"], record["disconnect_reason"]) == ("connected", None)
    published = await events.drain(expect=1)
    assert [(e["type"], e["instance_name"]) for e in published] == [("instance.connected", name)]


# --- 8. rows in statuses the daemon does not know, and rows of other integrations ---------------


async def add_foreign_row(env: Env, name: str, *, type_: str, provider: str,
                          org: uuid.UUID) -> uuid.UUID:
    row_id: uuid.UUID = await env.fetchval(
        f"INSERT INTO {env.names.integrations_table} (organization_id, type, provider, enabled,"
        " status, config) VALUES ($1, $2, $3, true, 'connected', $4::jsonb) RETURNING id",
        org, type_, provider, json.dumps({"instance_name": name}))
    return row_id


async def test_odd_statuses_and_foreign_rows(env: Env, events: EventTap) -> None:
    await add_keeper(env)
    terminal = {"disconnection_code": 401,
                "disconnection_object": device_removed_object(datetime.now(UTC))}
    archived, errored, blank = clinic_name(), clinic_name(), clinic_name()
    env.sim.add(archived, state="close", owner_jid=jid(), **terminal)
    env.sim.add(errored, state="open", owner_jid=jid())
    env.sim.add(blank, state="close", owner_jid=jid(), **terminal)
    await env.add_row(archived, status="archived")
    await env.add_row(errored, status="ERROR")
    await env.add_row(blank, status="")
    await env.add_row(clinic_name(), status="archived")  # on no server: not "missing" either
    disabled = clinic_name()
    env.sim.add(disabled, state="close", owner_jid=jid(), **terminal)
    await env.add_row(disabled, status="connected", enabled=False)
    other_provider, other_type = clinic_name(), clinic_name()
    for name in (other_provider, other_type):
        env.sim.add(name, state="close")
    await add_foreign_row(env, other_provider, type_="whatsapp", provider="twilio",
                          org=uuid.uuid4())
    await add_foreign_row(env, other_type, type_="sms", provider="evolution", org=uuid.uuid4())
    before = await statuses(env)

    async with controller_for(env, env.sim) as controller:
        for _ in range(2):
            result = await controller.run_pass()
            assert not result.failed, result.errors
            assert not result.blocked
            assert {a.kind for a, _, _ in result.report.outcomes} <= {ActionKind.DELETE}
    assert await statuses(env) == before
    left = set(env.sim.names())
    assert {archived, errored, blank, disabled} <= left
    assert not {other_provider, other_type} & left
    assert sorted(instance_of(p, "delete") or "" for p in deletes(env.sim)) == sorted(
        [other_provider, other_type])
    published = await events.drain(expect=2)
    # The foreign row is not the instance's desired row: the organization comes from the name.
    assert sorted((e["type"], e["instance_name"], e["organization_id"]) for e in published) == \
        sorted(("instance.removed", n, n[len("clinic-"):-14]) for n in (other_provider, other_type))


# --- 9. names that are almost managed --------------------------------------------------------


def almost_managed() -> list[str]:
    org, ts = str(uuid.uuid4()), str(int(time.time() * 1000))
    return [
        f"clinic-{org}-{ts}x",
        f"CLINIC-{org}-{ts}",
        f"Clinic-{org}-{ts}",
        f"clinic-{org[:-1]}-{ts}",
        f"clinic-{org}0-{ts}",
        f"clinic-{org}-{ts}\n",
        f"clinic-{org}-{ts} ",
        f" clinic-{org}-{ts}",
        f"xclinic-{org}-{ts}",
        f"clinic-{org}-",
        f"clinic-{org}-{ts}-2",
        f"clinic_{org}_{ts}",
        f"clinic-{org}-{ts.translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩'))}",
        f"clinic-{org.replace('a', 'g').replace('b', 'g').replace('c', 'g')}-{ts}g",
        f"clinic-{org}-{ts}/../x",
    ]


async def test_almost_managed_names_are_never_deleted(env: Env) -> None:
    await add_keeper(env)
    almost = almost_managed()
    for name in almost:
        env.sim.add(name, state="close")
    real_orphan = clinic_name(age=timedelta(days=2))
    env.sim.add(real_orphan, state="close")
    async with controller_for(env, env.sim) as controller:
        for _ in range(2):
            result = await controller.run_pass()
            assert not result.failed, result.errors
    assert result.plan is not None
    unmanaged = {d.instance_name for d in result.plan.drift if d.kind is DriftKind.UNMANAGED}
    assert unmanaged == set(almost)
    assert set(almost) <= set(env.sim.names())
    assert [instance_of(p, "delete") for p in deletes(env.sim)] == [real_orphan]


# --- 10. protected names and patterns --------------------------------------------------------


def org_starting(prefix: str) -> str:
    return prefix + str(uuid.uuid4())[len(prefix):]


async def test_protected_regex_covers_a_prefix_and_a_plain_name_exactly_one(env: Env) -> None:
    await add_keeper(env)
    ts = int(time.time() * 1000) - 86_400_000
    by_prefix = [f"clinic-{org_starting('0000')}-{ts}" for _ in range(3)]
    exact = f"clinic-{uuid.uuid4()}-{ts}"
    unprotected = [
        f"clinic-{org_starting('1000')}-{ts}",
        f"clinic-{org_starting('a000')}-{ts}",
        f"{exact}7",  # the plain name plus a digit: managed, and another instance
        f"clinic-{exact[len('clinic-'):-1]}{(int(exact[-1]) + 1) % 10}",
    ]
    for name in (*by_prefix, exact, *unprotected):
        env.sim.add(name, state="close")
    async with controller_for(env, env.sim,
                              RECONCILER_PROTECTED=f"^clinic-0000, {exact}") as controller:
        for _ in range(2):
            result = await controller.run_pass()
            assert not result.failed, result.errors
            assert not result.blocked
    left = set(env.sim.names())
    assert {*by_prefix, exact} <= left
    assert not set(unprotected) & left
    audited = {(r["instance_name"], r["outcome"], r["guard"]) for r in await env.audit()}
    assert {(n, "blocked", "protected") for n in (*by_prefix, exact)} <= audited


# --- 11. secrets never leak from a failing `once` ----------------------------------------------

DB_SECRET, REDIS_SECRET = "Db5ecr%40tPw", "R3d15S3cretPw"


@pytest.mark.parametrize("case", ["server-500-echoing-key", "wrong-key", "missing-database",
                                  "query-password", "redis-unreachable", "redis-user-password"])
async def test_secrets_never_appear_in_the_output_of_a_failing_once(
        env: Env, database_url: str, case: str) -> None:
    await add_keeper(env)
    env.sim.add(clinic_name(age=timedelta(days=2)), state="close")
    db = httpx.URL(database_url)
    overrides = {"RECONCILER_LOG_LEVEL": "debug", **ENFORCE}
    secrets = [API_KEY, DB_SECRET, unquote(DB_SECRET), REDIS_SECRET]
    if case == "server-500-echoing-key":
        env.sim.fault("fetchInstances", status=500, body={
            "status": 500, "error": "Internal Server Error",
            "response": {"message": [f"upstream said: bad apikey {API_KEY}"]}})
    elif case == "wrong-key":
        overrides["RECONCILER_EVOLUTION_API_KEY"] = "wr0ng-K3y-5ecret"
        secrets.append("wr0ng-K3y-5ecret")
    elif case == "missing-database":
        overrides["RECONCILER_DATABASE_URL"] = str(db.copy_with(
            username="postgres", password=unquote(DB_SECRET), path="/no_such_database_x"))
    elif case == "query-password":
        overrides["RECONCILER_DATABASE_URL"] = (
            f"postgresql://postgres@{db.host}:{db.port}/no_such_database_x"
            f"?password={DB_SECRET}")
    elif case == "redis-unreachable":
        overrides["RECONCILER_REDIS_URL"] = f"redis://:{REDIS_SECRET}@127.0.0.1:1/0"
    else:
        overrides["RECONCILER_REDIS_URL"] = f"redis://someone:{REDIS_SECRET}@127.0.0.1:1/0"
    for output in ("json", "table"):
        proc = env.cli("once", "--output", output, **overrides)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        for secret in secrets:
            assert secret not in proc.stdout, (case, output, secret)
            assert secret not in proc.stderr, (case, output, secret)
