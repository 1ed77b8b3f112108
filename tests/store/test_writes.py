"""Status updates, audit rows and outbox rows: guarded, minimal, and all-or-nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from store_helpers import App

from reconciler.events import build_event
from reconciler.model import (
    Action,
    ActionKind,
    Delete,
    Event,
    EventType,
    Flag,
    Guard,
    Outcome,
    StatusChange,
)
from reconciler.store import Store, StoreError


def _mark(kind: ActionKind, row_id: uuid.UUID, expected: str, *, name: str = "clinic-a",
          reason: str = "logged_out", disconnect_reason: str | None = None,
          org: uuid.UUID | None = None) -> StatusChange:
    return StatusChange(kind=kind, server="default", instance_name=name, reason=reason,
                        organization_id=org, row_id=row_id, expected_status=expected,
                        disconnect_reason=disconnect_reason)


def _event(action: Action, event_type: EventType) -> Event:
    return build_event(event_type, instance_name=action.instance_name,
                       organization_id=action.organization_id, server=action.server,
                       reason=action.reason, occurred_at=datetime.now(UTC))


@pytest.mark.parametrize(("kind", "before", "after"), [
    (ActionKind.MARK_DISCONNECTED, ("connected", None), ("disconnected", "logged_out")),
    (ActionKind.MARK_MISSING, ("connected", None), ("disconnected", "instance_missing")),
    (ActionKind.MARK_CONNECTED, ("disconnected", "logged_out"), ("connected", None)),
    (ActionKind.MARK_CONNECTED, ("pending", None), ("connected", None)),
])
async def test_update_changes_only_status_reason_and_updated_at(
    store: Store, app: App, kind: ActionKind, before: tuple[str, str | None],
    after: tuple[str, str | None],
) -> None:
    org = uuid.uuid4()
    row_id = await app.insert(instance_name="clinic-a", organization_id=org, status=before[0],
                              disconnect_reason=before[1])
    bystander = await app.insert(instance_name="clinic-b", status=before[0])
    old, old_bystander = await app.row(row_id), await app.row(bystander)
    action = _mark(kind, row_id, before[0], org=org,
                   disconnect_reason="logged_out" if kind is ActionKind.MARK_DISCONNECTED
                   else None)
    event = _event(action, EventType.DISCONNECTED)

    assert await store.decisions.update_status(action, event=event, lease=None)

    new = await app.row(row_id)
    assert (new["status"], new["disconnect_reason"]) == after
    assert new["updated_at"] > old["updated_at"]
    unchanged = {"status", "disconnect_reason", "updated_at"}
    assert {k: v for k, v in new.items() if k not in unchanged} == \
        {k: v for k, v in old.items() if k not in unchanged}
    assert await app.row(bystander) == old_bystander
    [audit] = await store.decisions.audit_rows(instance_name="clinic-a")
    assert audit["outcome"] == "ok" and audit["action"] == kind.value
    assert audit["event_id"] == event.event_id
    [pending] = await store.outbox.pending()
    assert pending.payload == event.payload() and pending.instance_name == "clinic-a"


async def test_a_concurrent_change_by_the_application_wins(store: Store, app: App) -> None:
    row_id = await app.insert(instance_name="clinic-a", status="connected")
    action = _mark(ActionKind.MARK_DISCONNECTED, row_id, "connected",
                   disconnect_reason="logged_out")
    await app.conn.execute(f"UPDATE {app.table} SET status = 'pending' WHERE id = $1", row_id)
    before = await app.row(row_id)

    event = _event(action, EventType.DISCONNECTED)
    assert not await store.decisions.update_status(action, event=event, lease=None)

    assert await app.row(row_id) == before
    assert await store.decisions.audit_rows() == []
    assert await store.outbox.count_pending() == 0


async def test_a_deleted_row_or_another_type_is_a_guard_miss(store: Store, app: App) -> None:
    email = await app.insert(instance_name="clinic-a", type="email", status="connected")
    action = _mark(ActionKind.MARK_DISCONNECTED, email, "connected",
                   disconnect_reason="logged_out")
    assert not await store.decisions.update_status(action, event=None, lease=None)
    assert not await store.decisions.update_status(
        _mark(ActionKind.MARK_CONNECTED, uuid.uuid4(), "disconnected"), event=None, lease=None)
    assert (await app.row(email))["status"] == "connected"


async def test_a_failure_after_the_update_leaves_nothing_written(store: Store, app: App) -> None:
    row_id = await app.insert(instance_name="clinic-a", status="connected")
    flag = Flag(server="default", instance_name="clinic-a", reason="duplicate_row",
                group_key="duplicate_row:clinic-a")
    event = _event(flag, EventType.DUPLICATE)
    await store.decisions.record(flag, Outcome.OK, event=event)
    before = await app.row(row_id)
    action = _mark(ActionKind.MARK_DISCONNECTED, row_id, "connected",
                   disconnect_reason="logged_out")

    with pytest.raises(StoreError, match="UniqueViolation"):
        # the same event_id: the outbox insert fails
        await store.decisions.update_status(action, event=event, lease=None)

    assert await app.row(row_id) == before
    assert [r["action"] for r in await store.decisions.audit_rows()] == ["flag"]
    assert await store.outbox.count_pending() == 1


async def test_update_refuses_an_action_that_is_no_status_change(store: Store) -> None:
    with pytest.raises(TypeError, match="row_id"):
        Delete(server="default", instance_name="clinic-a", reason="orphan",  # type: ignore[call-arg]
               row_id=uuid.uuid4(), expected_status="connected")
    unguarded = StatusChange(kind=ActionKind.MARK_CONNECTED, server="default",
                             instance_name="clinic-a", reason="reconnected", row_id=uuid.uuid4(),
                             expected_status=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected_status"):
        await store.decisions.update_status(unguarded, event=None, lease=None)


async def test_record_writes_every_audit_column_and_the_outbox(store: Store) -> None:
    org, row = uuid.uuid4(), uuid.uuid4()
    token = await store.leases.acquire("default", "replica-1")
    assert token is not None
    mark = _mark(ActionKind.MARK_DISCONNECTED, row, "connected", name="clinic-x",
                 reason="orphan", org=org)
    blocked = Delete(server="default", instance_name="clinic-y", reason="orphan",
                     blocked_by=Guard.MAX_DELETIONS)
    event = _event(mark, EventType.DISCONNECTED)

    await store.decisions.record(mark, Outcome.OK, event=event, lease=token)
    await store.decisions.record(blocked, Outcome.BLOCKED, lease=token)
    await store.decisions.record(mark, Outcome.FAILED, error="HTTP 500 from server",
                                 lease=token)
    await store.decisions.record(blocked, Outcome.DRY_RUN)

    rows = await store.decisions.audit_rows()
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    failed, blocked_row = rows[1], rows[2]
    ok = rows[3]
    for r in rows:
        assert isinstance(r["at"], datetime) and r["at"].tzinfo is not None
    assert {k: v for k, v in ok.items() if k not in ("id", "at")} == {
        "server": "default", "instance_name": "clinic-x", "organization_id": org,
        "row_id": row, "action": "mark_disconnected", "reason": "orphan", "guard": None,
        "outcome": "ok", "error": None, "event_id": event.event_id,
        "epoch": token.epoch,
    }
    assert (blocked_row["guard"], blocked_row["outcome"], blocked_row["event_id"]) == \
        ("max_deletions", "blocked", None)
    assert (failed["outcome"], failed["error"]) == ("failed", "HTTP 500 from server")
    assert rows[0]["epoch"] is None and rows[0]["outcome"] == "dry_run"
    of_y = await store.decisions.audit_rows(instance_name="clinic-y")
    assert [r["instance_name"] for r in of_y] == ["clinic-y", "clinic-y"]
    assert len(await store.decisions.audit_rows(limit=1)) == 1
    [pending] = await store.outbox.pending()
    assert pending.event_id == event.event_id
    assert pending.payload == event.payload()
