"""The store's pure parts: names, row decisions, status changes, redaction."""

from __future__ import annotations

import json
import uuid

import pytest

from reconciler.model import ActionKind, DesiredInstance, StatusChange
from reconciler.redaction import url_passwords
from reconciler.store.names import SqlNames
from reconciler.store.rows import InvalidRow, claimed_keys, desired_from_row, status_change


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
            "disconnect_reason": None, "config_type": "object",
            "config": {"instance_name": "clinic-a"}}
    assert desired_from_row(base) == DesiredInstance(row_id, org, "clinic-a", False, "pending",
                                                     None)
    assert desired_from_row({**base, "config_type": "array", "config": ["clinic-a"]}) == \
        InvalidRow(row_id, "config is not a JSON object but array", frozenset({"clinic-a"}))
    assert desired_from_row({**base, "config_type": None, "config": None}) == InvalidRow(
        row_id, "config is not a JSON object but NULL")
    assert desired_from_row({**base, "config": {"instance_name": 7}}) == InvalidRow(
        row_id, "config.instance_name is not a string but int", frozenset({"instance_name"}))


@pytest.mark.parametrize("name", ['"clinic-a"', ' ["clinic-a"]', '{"n": "clinic-a"}'])
def test_a_double_encoded_instance_name_is_unreadable(name: str) -> None:
    """Its decoded value is what the row means; taken as a name it would orphan the instance."""
    row = {"id": uuid.uuid4(), "organization_id": None, "enabled": True, "status": "connected",
           "disconnect_reason": None, "config_type": "object", "config": {"instance_name": name}}
    invalid = desired_from_row(row)
    assert isinstance(invalid, InvalidRow)
    assert invalid.problem == "config.instance_name is double-encoded JSON"
    assert "clinic-a" in invalid.claims


def test_claims_are_every_string_also_inside_strings_that_hold_json() -> None:
    config = {"instance_name": ["\tclinic-a "], "meta": {"clinic-key": 1, "n": 2.5, "b": True},
              "old": json.dumps({"x": json.dumps(["clinic-deep"])}), "bad": "{not json"}
    claims = claimed_keys(config)
    assert {"clinic-a", "clinic-key", "clinic-deep", "{not json", "instance_name"} <= claims
    assert "\tclinic-a " not in claims, "keys by the one name rule"
    assert claimed_keys(json.dumps("clinic-b")) == {json.dumps("clinic-b"), "clinic-b"}
    assert claimed_keys(None) == frozenset()
    deep: object = "clinic-bottom"
    for _ in range(5000):
        deep = [deep]
    assert "clinic-bottom" in claimed_keys(deep), "no recursion limit to hide behind"


def test_status_change() -> None:
    def action(kind: ActionKind, reason: str | None = None) -> StatusChange:
        return StatusChange(kind=kind, server="s", instance_name="n", reason="r",
                            row_id=uuid.UUID(int=1), expected_status="connected",
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
    assert secret in url_passwords(dsn)
