"""The domain: what is desired, what is observed, what the daemon remembers, what it plans.

Everything here is a frozen value. The planner turns these into a `Plan` without I/O; the
adapters (store, evolution, events) only produce and consume them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import ClassVar
from uuid import UUID

MAX_INSTANCE_NAME = 255
"""Evolution v2 stores names as VarChar(255). A longer name is no instance the platform made: a
row naming one is invalid, and an instance listed under one is never managed (never touched)."""


class Mode(StrEnum):
    DRY_RUN = "dry_run"
    ENFORCE = "enforce"


class LiveState(StrEnum):
    """The in-memory connection state of an instance on its server (never the stored column)."""

    OPEN = "open"
    CONNECTING = "connecting"
    CLOSE = "close"
    UNKNOWN = "unknown"


class DriftKind(StrEnum):
    ORPHAN = "orphan"
    ORPHAN_PENDING = "orphan_pending"
    DUPLICATE_NUMBER = "duplicate_number"
    DUPLICATE_NAME = "duplicate_name"
    DUPLICATE_ROW = "duplicate_row"
    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"
    MISSING = "missing"
    UNMANAGED = "unmanaged"


class ActionKind(StrEnum):
    DELETE = "delete"
    MARK_DISCONNECTED = "mark_disconnected"
    MARK_CONNECTED = "mark_connected"
    MARK_MISSING = "mark_missing"
    FLAG = "flag"


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    BLOCKED = "blocked"


class Guard(StrEnum):
    """Why a deletion was held back (SPEC 4.3); the label of `guard_blocked_total`."""

    MAX_DELETIONS = "max_deletions"
    MAX_FRACTION = "max_fraction"
    EMPTY_DESIRED = "empty_desired"
    COLLAPSE = "collapse"
    RECHECK = "recheck"
    PROTECTED = "protected"
    INCOMPLETE_READ = "incomplete_read"
    INVALID_ROW = "invalid_row"


BLAST_RADIUS_GUARDS = frozenset(
    {Guard.MAX_DELETIONS, Guard.MAX_FRACTION, Guard.EMPTY_DESIRED, Guard.COLLAPSE}
)


class Stage(StrEnum):
    """Where a pass failed: the label of `reconcile_errors_total{stage}` (SPEC 6)."""

    READ_DESIRED = "read_desired"
    READ_OBSERVED = "read_observed"
    APPLY = "apply"
    PUBLISH = "publish"


class EventType(StrEnum):
    REMOVED = "instance.removed"
    DISCONNECTED = "instance.disconnected"
    CONNECTED = "instance.connected"
    MISSING = "instance.missing"
    DUPLICATE = "instance.duplicate"


class DeleteResult(StrEnum):
    """What became of a delete the executor attempted."""

    VERIFIED = "verified"
    """Gone from a later unfiltered listing: `instance.removed` may be published."""
    UNVERIFIED = "unverified"
    """The server answered, but the instance is still listed (Evolution cleans up later)."""
    FAILED = "failed"
    """A call failed; retried with backoff."""


class RowStatus(StrEnum):
    """Values of the integrations table's `status` column that the daemon understands."""

    PENDING = "pending"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class Event:
    """One event of SPEC 5, its fields in the order consumers see them."""

    event_id: UUID
    type: EventType
    instance_name: str
    organization_id: UUID | None
    server: str
    """The server that lists the instance; "" (`FLEET`) for `instance.missing`."""
    reason: str
    occurred_at: datetime
    source: str = "evolution-reconciler"

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")

    def payload(self) -> dict[str, object]:
        """The JSON object consumers receive: ids and the time as strings, the time in UTC."""
        return {
            "event_id": str(self.event_id),
            "type": self.type.value,
            "instance_name": self.instance_name,
            "organization_id": None if self.organization_id is None else str(self.organization_id),
            "server": self.server,
            "reason": self.reason,
            "occurred_at": self.occurred_at.astimezone(UTC).isoformat(),
            "source": self.source,
        }


# --- desired state ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DesiredInstance:
    """One usable integration row: it names the Evolution instance it owns."""

    id: UUID
    organization_id: UUID | None
    instance_name: str
    enabled: bool
    status: str
    disconnect_reason: str | None


@dataclass(frozen=True)
class DesiredState:
    """The integration rows read in one pass; `invalid_rows` were reported and skipped."""

    instances: tuple[DesiredInstance, ...]
    invalid_rows: int = 0
    claimed: frozenset[str] = frozenset()
    """Instance keys (`names.instance_key`) that the invalid rows might be naming: an instance
    one of them could own is claimed, never an orphan (SPEC 4.3 rule 5)."""


@dataclass(frozen=True, slots=True)
class Tombstone:
    """An integration row was deleted: positive evidence its instance was released (SPEC 4.2)."""

    instance_name: str
    organization_id: UUID | None
    deleted_at: datetime


# --- observed state --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A disconnect as SPEC 4.4 names it: a short stable reason, and whether it is terminal."""

    reason: str
    terminal: bool
    code: int | None = None


@dataclass(frozen=True, slots=True)
class ObservedInstance:
    """One instance as a server lists it, normalised across API lines (v1, v2)."""

    server: str
    name: str
    stored_status: str | None
    """The status the server's listing reports (v2: a database column that lags; v1: memory)."""
    live: LiveState
    """The in-memory state from `/metrics` or a `connectionState` probe; UNKNOWN when unread."""
    owner_jid: str | None
    number: str | None
    """Digits of the owner JID without device suffix or domain: the WhatsApp number."""
    created_at: datetime | None
    disconnect: Disconnect | None
    """The recorded terminal disconnect; only set while the stored status is `close`."""
    instance_id: str | None = None
    client_name: str | None = None
    anomaly: str | None = None
    """What was odd in the listed item (its odd fields read as absent): never deleted for it."""


@dataclass(frozen=True)
class ServerInventory:
    """A complete, successful read of one server in this pass."""

    server: str
    api_line: str
    version: str | None
    client_name: str | None
    instances: tuple[ObservedInstance, ...]


@dataclass(frozen=True)
class ServerReadError:
    """A server whose read failed or was partial: nothing may be decided from it."""

    server: str
    stage: Stage
    error: str
    operator_error: bool = False
    """True when the operator must fix something (wrong key, wrong URL); False when transient."""


ServerRead = ServerInventory | ServerReadError


# --- memory ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceMemory:
    """What the daemon remembers of one (server, instance name) across passes and restarts."""

    server: str
    instance_name: str
    first_seen: datetime
    orphan_since: datetime | None = None
    orphan_streak: int = 0
    not_connected_since: datetime | None = None
    """First observation of the current "not connected" verdict (disconnect hysteresis)."""
    not_connected_reason: str | None = None
    last_live: LiveState = LiveState.UNKNOWN
    delete_requested_at: datetime | None = None
    """A delete was decided and may have reached the server: once the instance is absent,
    `instance.removed` is owed, under `delete_event_id`."""
    delete_reason: str | None = None
    delete_event_id: UUID | None = None
    """The one event id of this removal, persisted before the first call (SPEC 5)."""
    instance_id: str | None = None
    """The server's id of the instance seen under this name: a new id is a new instance."""
    delete_attempts: int = 0
    next_delete_at: datetime | None = None
    """Backoff after a failed or unverified delete."""


@dataclass(frozen=True)
class PassCounts:
    """Counts from the last successful pass of a server, for the collapse guard."""

    desired: int
    observed: int


@dataclass(frozen=True)
class Memory:
    instances: Mapping[tuple[str, str], InstanceMemory] = field(default_factory=dict)
    last_counts: Mapping[str, PassCounts] = field(default_factory=dict)
    missing_streaks: Mapping[str, int] = field(default_factory=dict)
    """Desired instance names found on no server, by consecutive complete passes."""
    reported_duplicates: frozenset[str] = frozenset()
    """Keys of duplicate groups already published; published again only if a group reappears."""
    tombstones: Mapping[str, Tombstone] = field(default_factory=dict)


# --- policy and plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    mode: Mode = Mode.DRY_RUN
    managed_pattern: re.Pattern[str] = re.compile(
        r"^clinic-(?P<org>[0-9a-fA-F-]{36})-(?P<ts>[0-9]+)$"
    )
    protected: tuple[re.Pattern[str], ...] = ()
    orphan_grace: timedelta = timedelta(seconds=300)
    orphan_confirmations: int = 2
    max_deletions: int = 10
    max_deletion_fraction: float = 0.25
    disconnect_after: timedelta = timedelta(seconds=120)
    mass_disconnect_fraction: float = 0.5
    allow_mass_deletion: bool = False


@dataclass(frozen=True, slots=True)
class Drift:
    server: str
    instance_name: str
    kind: DriftKind
    detail: str = ""


FLEET = ""
"""The scope of a decision that belongs to no server (`missing`, a duplicate row that no server
lists). The leader of the first server by name takes it; events, the audit log and the output
spell it "" (SPEC 5), its metrics go under that first server."""


@dataclass(frozen=True, kw_only=True)
class _Decision:
    server: str
    """The server that lists the instance, or `FLEET`."""
    instance_name: str
    reason: str
    """The drift kind or disconnect reason: the audit `reason` and the event `reason`."""
    organization_id: UUID | None = None
    blocked_by: Guard | None = None
    """Audited as blocked by this guard instead of being carried out."""


@dataclass(frozen=True, kw_only=True)
class Delete(_Decision):
    """Delete an orphan, or confirm that an earlier delete of it took effect."""

    kind: ClassVar[ActionKind] = ActionKind.DELETE
    event: ClassVar[EventType] = EventType.REMOVED
    logout_first: bool = False
    """The instance is live: log it out first to free the phone's device slot."""
    already_gone: bool = False
    """An earlier delete was sent and the instance is now absent: only confirm it."""
    event_id: UUID | None = None
    """The removal's event id remembered from an earlier attempt (None: a new one)."""


_MARK_EVENTS = {
    ActionKind.MARK_DISCONNECTED: EventType.DISCONNECTED,
    ActionKind.MARK_CONNECTED: EventType.CONNECTED,
    ActionKind.MARK_MISSING: EventType.MISSING,
}


@dataclass(frozen=True, kw_only=True)
class StatusChange(_Decision):
    """Update an integration row's status, guarded by the status read."""

    kind: ActionKind
    """`mark_disconnected`, `mark_connected` or `mark_missing`."""
    row_id: UUID
    expected_status: str
    """The status read: the guard of the UPDATE (`WHERE id = $1 AND status = $2`)."""
    disconnect_reason: str | None = None

    @property
    def event(self) -> EventType:
        return _MARK_EVENTS[self.kind]


@dataclass(frozen=True, kw_only=True)
class Flag(_Decision):
    """Report a duplicate group once (`instance.duplicate`); nothing is changed."""

    kind: ClassVar[ActionKind] = ActionKind.FLAG
    event: ClassVar[EventType] = EventType.DUPLICATE
    group_key: str
    """The group it reports, recorded with its event so that it is reported once."""


Action = Delete | StatusChange | Flag
"""One thing the executor should do (or audit as blocked or as a dry run)."""


@dataclass(frozen=True)
class Plan:
    drift: tuple[Drift, ...]
    actions: tuple[Action, ...]
    memory: Memory
    """The memory to persist once this pass's actions are done (a `plan` command discards it)."""
    degraded_servers: frozenset[str] = frozenset()

    @property
    def blocked(self) -> bool:
        """A blast-radius guard held a deletion or a missing mark back (exit code 3)."""
        return any(a.blocked_by in BLAST_RADIUS_GUARDS for a in self.actions)
