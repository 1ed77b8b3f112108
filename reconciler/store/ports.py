"""What each consumer needs of the store, one protocol per role, so a test can fake one part.

`Store` composes the PostgreSQL implementations over one pool; the semantics each method
promises (fencing, one transaction per decision) are documented on those implementations.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from anyio.streams.memory import MemoryObjectReceiveStream

from reconciler.hints import Hint
from reconciler.model import (
    Action,
    Delete,
    DesiredState,
    Event,
    Flag,
    InstanceMemory,
    Memory,
    Outcome,
    ServerInventory,
    StatusChange,
)
from reconciler.store.rows import LeaseToken, OutboxEvent


class DesiredSource(Protocol):
    """The integrations table: what should exist (`DesiredTable`)."""

    async def read(self) -> DesiredState: ...

    async def read_naming(self, instance_name: str) -> DesiredState: ...

    async def row_names_instance(
        self, instance_name: str, *, lease: LeaseToken | None = None
    ) -> bool: ...

    async def check_table(self) -> None: ...

    async def install_trigger(self) -> None: ...


class MemoryStore(Protocol):
    """What the daemon remembers between passes, tombstones included (`MemoryTables`)."""

    async def load(self) -> Memory: ...

    async def save(
        self,
        memory: Memory,
        *,
        servers: Collection[str],
        leases: Mapping[str, LeaseToken] | None = None,
        fleet: bool = True,
        keep: Collection[tuple[str, str]] = (),
        baseline: Memory | None = None,
    ) -> None: ...

    async def retire_tombstones(
        self, instance_names: Collection[str], *, leases: Iterable[LeaseToken] = ()
    ) -> None: ...

    async def load_for(self, instance_names: Collection[str]) -> Memory: ...

    async def save_instances(
        self, entries: Collection[InstanceMemory], *, lease: LeaseToken
    ) -> None: ...

    async def pass_hint(self, hint: Hint) -> None: ...

    def listen_hints(
        self,
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[Hint]]: ...


class DecisionLog(Protocol):
    """The fenced writes of the executor, each with its audit row (`DecisionTables`)."""

    async def update_status(
        self, action: StatusChange, *, event: Event | None, lease: LeaseToken | None
    ) -> bool: ...

    async def record(
        self,
        action: Action,
        outcome: Outcome,
        *,
        error: str | None = None,
        event: Event | None = None,
        lease: LeaseToken | None = None,
    ) -> None: ...

    async def record_many(
        self, entries: Sequence[tuple[Action, Outcome, LeaseToken | None]]
    ) -> None: ...

    async def check_lease(self, lease: LeaseToken) -> None: ...

    async def begin_delete(self, entry: InstanceMemory, *, lease: LeaseToken) -> None: ...

    async def record_delete_failure(
        self, action: Delete, entry: InstanceMemory, error: str, *, lease: LeaseToken
    ) -> None: ...

    async def confirm_removal(
        self, action: Delete, event: Event, *, lease: LeaseToken
    ) -> bool: ...

    async def record_flag(
        self, action: Flag, event: Event, *, lease: LeaseToken
    ) -> bool: ...

    async def audit_rows(
        self,
        *,
        instance_name: str | None = None,
        limit: int = 100,
        since_seconds: float | None = None,
        action: str | None = None,
        outcome: str | None = None,
    ) -> list[dict[str, object]]: ...


class Outbox(Protocol):
    """The events written with their audit rows, until published (`OutboxTable`)."""

    async def pending(self, limit: int = 500) -> list[OutboxEvent]: ...

    async def mark_published(self, ids: Sequence[int]) -> None: ...

    async def prune(self, keep_seconds: float = 7 * 86400) -> int: ...

    async def count_pending(self) -> int: ...


class LeaseStore(Protocol):
    """One lease per server (`LeaseTable`)."""

    async def acquire(
        self, server: str, holder: str, ttl: float = 15.0, *, take_over: bool = False
    ) -> LeaseToken | None: ...

    async def renew(self, token: LeaseToken, ttl: float = 15.0) -> bool: ...

    async def release(self, token: LeaseToken) -> None: ...

    async def heartbeat(self, holder: str, live_within: float = 15.0) -> int: ...

    async def unled(self, servers: list[str]) -> set[str]: ...

    async def leave(self, holder: str) -> None: ...


class SnapshotStore(Protocol):
    """Each server's latest complete read, for the decisions that span servers."""

    async def save(self, read: ServerInventory, *, lease: LeaseToken) -> None: ...

    async def fresh(self, servers: list[str], max_age: float) -> dict[str, ServerInventory]: ...
