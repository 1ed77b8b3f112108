"""Pure conversions between database rows and domain values: the store's functional core."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from reconciler.model import (
    MAX_INSTANCE_NAME,
    Action,
    ActionKind,
    DesiredInstance,
    InstanceMemory,
    LiveState,
    RowStatus,
)
from reconciler.reasons import INSTANCE_MISSING


class Row(Protocol):
    """A database row by column name (an asyncpg Record, or a dict in tests)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class LeaseToken:
    """Proof of leading a server; writes fenced by it fail once another replica took over."""

    server: str
    holder: str
    epoch: int


@dataclass(frozen=True)
class OutboxEvent:
    id: int
    event_id: UUID
    instance_name: str
    payload: dict[str, object]


@dataclass(frozen=True)
class InvalidRow:
    """An integration row that names no usable instance, and why (for the operator's log)."""

    row_id: UUID
    problem: str


def desired_from_row(row: Row) -> DesiredInstance | InvalidRow:
    """Decide whether a row names an instance.

    `row` holds the row's columns plus `config_type` (`jsonb_typeof(config)`) and `instance_name`
    (`config -> 'instance_name'`, decoded), so a config of any JSON type reaches here unharmed.
    """
    row_id: UUID = row["id"]
    config_type = row["config_type"]
    if config_type != "object":
        return InvalidRow(row_id, f"config is not a JSON object but {config_type or 'NULL'}")
    name = row["instance_name"]
    if name is None:
        return InvalidRow(row_id, "config has no instance_name")
    if not isinstance(name, str):
        return InvalidRow(row_id, f"config.instance_name is not a string but {type(name).__name__}")
    if not name.strip():
        return InvalidRow(row_id, "config.instance_name is empty")
    if len(name) > MAX_INSTANCE_NAME:
        return InvalidRow(row_id, f"config.instance_name is longer than {MAX_INSTANCE_NAME}"
                                  " characters")
    return DesiredInstance(
        id=row_id,
        organization_id=row["organization_id"],
        instance_name=name,
        enabled=bool(row["enabled"]),
        status=row["status"] or "",
        disconnect_reason=row["disconnect_reason"],
    )


def status_change(action: Action) -> tuple[str, str | None]:
    """The (status, disconnect_reason) an action writes to its integration row."""
    if action.kind is ActionKind.MARK_DISCONNECTED:
        if not action.disconnect_reason:
            raise ValueError(f"mark_disconnected of {action.instance_name} without a reason")
        return RowStatus.DISCONNECTED.value, action.disconnect_reason
    if action.kind is ActionKind.MARK_MISSING:
        return RowStatus.DISCONNECTED.value, INSTANCE_MISSING
    if action.kind is ActionKind.MARK_CONNECTED:
        return RowStatus.CONNECTED.value, None
    raise ValueError(f"{action.kind.value} does not update an integration row")


def event_id_of(event: Mapping[str, object]) -> UUID:
    return UUID(str(event["event_id"]))


OBSERVATION_COLUMNS = (
    "server",
    "instance_name",
    "first_seen",
    "orphan_since",
    "orphan_streak",
    "not_connected_since",
    "not_connected_reason",
    "last_live",
    "delete_requested_at",
    "delete_reason",
    "delete_attempts",
    "next_delete_at",
    "delete_event_id",
    "instance_id",
)


def observation_row(m: InstanceMemory) -> tuple[object, ...]:
    """The values of `OBSERVATION_COLUMNS`, in order."""
    return (
        m.server,
        m.instance_name,
        m.first_seen,
        m.orphan_since,
        m.orphan_streak,
        m.not_connected_since,
        m.not_connected_reason,
        m.last_live.value,
        m.delete_requested_at,
        m.delete_reason,
        m.delete_attempts,
        m.next_delete_at,
        m.delete_event_id,
        m.instance_id,
    )


_LIVE_STATES = frozenset(s.value for s in LiveState)


def instance_memory(row: Row) -> InstanceMemory:
    live: str = row["last_live"]
    return InstanceMemory(
        server=row["server"],
        instance_name=row["instance_name"],
        first_seen=row["first_seen"],
        orphan_since=row["orphan_since"],
        orphan_streak=row["orphan_streak"],
        not_connected_since=row["not_connected_since"],
        not_connected_reason=row["not_connected_reason"],
        last_live=LiveState(live) if live in _LIVE_STATES else LiveState.UNKNOWN,
        delete_requested_at=row["delete_requested_at"],
        delete_reason=row["delete_reason"],
        delete_attempts=row["delete_attempts"],
        next_delete_at=row["next_delete_at"],
        delete_event_id=row["delete_event_id"],
        instance_id=row["instance_id"],
    )

