"""Pure conversions between database rows and domain values: the store's functional core."""

from __future__ import annotations

import json
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
    StatusChange,
)
from reconciler.names import instance_key
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
    claims: frozenset[str] = frozenset()
    """What it might be naming (`claimed_keys` of its config): those instances are not orphans."""


DESIRED_COLUMNS = (
    "id, organization_id, enabled, status, disconnect_reason,"
    " jsonb_typeof(config) AS config_type, config"
)
"""What `desired_from_row` reads: the read of the desired state and the point re-check share it."""

DESIRED_TEXT_COLUMNS = (
    "id, organization_id, enabled, status, disconnect_reason,"
    " jsonb_typeof(config) AS config_type, config::text AS config"
)
"""`DESIRED_COLUMNS` with `config` as its JSON text (`desired_from_text`): the whole row is
then hashable, so the read of the desired state decodes only the rows that changed."""


def desired_from_row(row: Row) -> DesiredInstance | InvalidRow:
    """Decide whether a row names an instance.

    `row` holds `DESIRED_COLUMNS`: `config` decoded, whatever its JSON type, and `config_type`,
    which tells a SQL NULL from a JSON null.
    """
    return _desired(row["id"], row["organization_id"], row["enabled"], row["status"],
                    row["disconnect_reason"], row["config_type"], row["config"])


def desired_from_text(row: Row) -> DesiredInstance | InvalidRow:
    """`desired_from_row` of a row holding `DESIRED_TEXT_COLUMNS`."""
    text: str | None = row["config"]
    return _desired(row["id"], row["organization_id"], row["enabled"], row["status"],
                    row["disconnect_reason"], row["config_type"],
                    None if text is None else json.loads(text))


def _desired(
    row_id: UUID,
    organization_id: UUID | None,
    enabled: bool | None,
    status: str | None,
    disconnect_reason: str | None,
    config_type: str | None,
    config: Any,
) -> DesiredInstance | InvalidRow:
    problem = _problem(config_type, config)
    if problem is not None:
        return InvalidRow(row_id, problem, claimed_keys(config))
    return DesiredInstance(
        id=row_id,
        organization_id=organization_id,
        instance_name=config["instance_name"],
        enabled=bool(enabled),
        status=status or "",
        disconnect_reason=disconnect_reason,
    )


def _problem(config_type: str | None, config: object) -> str | None:
    if config_type != "object" or not isinstance(config, dict):
        return f"config is not a JSON object but {config_type or 'NULL'}"
    name = config.get("instance_name")
    if name is None:
        return "config has no instance_name"
    if not isinstance(name, str):
        return f"config.instance_name is not a string but {type(name).__name__}"
    if not instance_key(name):
        return "config.instance_name is empty"
    if len(name) > MAX_INSTANCE_NAME:
        return f"config.instance_name is longer than {MAX_INSTANCE_NAME} characters"
    if name.lstrip()[:1] in _JSON_CONTAINERS and isinstance(_decoded(name), str | list | dict):
        return "config.instance_name is double-encoded JSON"
    return None


_JSON_CONTAINERS = frozenset('"[{')
"""How the JSON text of a string, an array or an object begins (after blanks): a name beginning
otherwise is not double-encoded, and is not parsed to find out."""


def claimed_keys(config: object) -> frozenset[str]:
    """Every string anywhere in a config (object keys too), also inside strings that hold JSON,
    as keys by the one name rule: a row that could not be read might be naming any of them."""
    keys: set[str] = set()
    pending = [config]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            keys.update(instance_key(k) for k in value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            keys.add(instance_key(value))
            pending.append(_decoded(value))
    return frozenset(keys)


def _decoded(text: str) -> object:
    """`text` parsed as JSON, or None; a decoded string is shorter, so decoding again ends."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def row_of(action: Action) -> UUID | None:
    """The integration row an action concerns, for the audit log (status changes have one)."""
    return action.row_id if isinstance(action, StatusChange) else None


def status_change(action: StatusChange) -> tuple[str, str | None]:
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


LIVE_STATES = {s.value: s for s in LiveState}
"""A stored live state by its text (a lookup, not an enum call per row)."""


def instance_memory(row: Row) -> InstanceMemory:
    return InstanceMemory(
        server=row["server"],
        instance_name=row["instance_name"],
        first_seen=row["first_seen"],
        orphan_since=row["orphan_since"],
        orphan_streak=row["orphan_streak"],
        not_connected_since=row["not_connected_since"],
        not_connected_reason=row["not_connected_reason"],
        last_live=LIVE_STATES.get(row["last_live"], LiveState.UNKNOWN),
        delete_requested_at=row["delete_requested_at"],
        delete_reason=row["delete_reason"],
        delete_attempts=row["delete_attempts"],
        next_delete_at=row["next_delete_at"],
        delete_event_id=row["delete_event_id"],
        instance_id=row["instance_id"],
    )

