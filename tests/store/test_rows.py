"""The store's pure parts: names, row decisions, status changes, redaction."""

from __future__ import annotations

import uuid

import pytest

from reconciler.model import Action, ActionKind, DesiredInstance
from reconciler.store.names import SqlNames
from reconciler.store.rows import InvalidRow, desired_from_row, status_change
from reconciler.store.store import _passwords


def test_names_are_quoted() -> None:
    names = SqlNames.parse("healthcare.integrations", "reconciler")
    assert names.table == '"healthcare"."integrations"'
    assert names.own == '"reconciler"'
    assert names.tombstone_channel == "reconciler_tombstones"
    long = SqlNames.parse("a.b", "s" * 63)
    assert len(long.tombstone_channel) == 63


def test_desired_from_row() -> None:
    row_id, org = uuid.uuid4(), uuid.uuid4()
    base = {"id": row_id, "organization_id": org, "enabled": None, "status": "pending",
            "disconnect_reason": None, "config_type": "object", "instance_name": "clinic-a"}
    assert desired_from_row(base) == DesiredInstance(row_id, org, "clinic-a", False, "pending",
                                                     None)
    assert desired_from_row({**base, "config_type": "array"}) == InvalidRow(
        row_id, "config is not a JSON object but array")
    assert desired_from_row({**base, "config_type": None}) == InvalidRow(
        row_id, "config is not a JSON object but NULL")
    assert desired_from_row({**base, "instance_name": 7}) == InvalidRow(
        row_id, "config.instance_name is not a string but int")


def test_status_change() -> None:
    def action(kind: ActionKind, reason: str | None = None) -> Action:
        return Action(kind=kind, server="s", instance_name="n", reason="r",
                      disconnect_reason=reason)

    assert status_change(action(ActionKind.MARK_DISCONNECTED, "banned")) == \
        ("disconnected", "banned")
    assert status_change(action(ActionKind.MARK_MISSING)) == ("disconnected", "instance_missing")
    assert status_change(action(ActionKind.MARK_CONNECTED, "stale")) == ("connected", None)
    with pytest.raises(ValueError, match="without a reason"):
        status_change(action(ActionKind.MARK_DISCONNECTED))
    with pytest.raises(ValueError, match="does not update"):
        status_change(action(ActionKind.FLAG))


@pytest.mark.parametrize(("dsn", "secret"), [
    ("postgresql://app:p%40ss@db/x", "p@ss"),
    ("postgresql://app:p%40ss@db/x", "p%40ss"),
    ("host=db user=app password=kv-secret dbname=x", "kv-secret"),
    ("postgresql://db/x?password=q-secret&sslmode=require", "q-secret"),
])
def test_every_spelling_of_the_password_is_redacted(dsn: str, secret: str) -> None:
    assert secret in _passwords(dsn)
