"""The store: one connection pool, cut by role (see `ports`).

Timestamps the daemon records come from the database's clock, so replicas never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.store.changes import WriteLog
from reconciler.store.db import Database
from reconciler.store.decisions import DecisionTables, OutboxTable
from reconciler.store.desired import DesiredTable
from reconciler.store.leases import LeaseTable
from reconciler.store.memory import MemoryTables
from reconciler.store.names import SqlNames
from reconciler.store.ports import (
    DecisionLog,
    DesiredSource,
    LeaseStore,
    MemoryStore,
    Outbox,
    SnapshotStore,
)
from reconciler.store.schema import apply_migrations
from reconciler.store.snapshots import SnapshotTable


@dataclass(frozen=True)
class Store:
    """The roles over one pool, each typed by its protocol so that a test can swap one."""

    desired: DesiredSource
    memory: MemoryStore
    decisions: DecisionLog
    outbox: Outbox
    leases: LeaseStore
    snapshots: SnapshotStore
    _db: Database = field(repr=False)

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        integrations_table: str,
        schema: str,
    ) -> Store:
        """Validate the names (ValueError, before connecting), then open the one pool; the
        defaults of both names live in settings."""
        db = await Database.connect(dsn, SqlNames.parse(integrations_table, schema))
        writes = WriteLog()
        return cls(desired=DesiredTable(db), memory=MemoryTables(db, writes),
                   decisions=DecisionTables(db, writes), outbox=OutboxTable(db),
                   leases=LeaseTable(db), snapshots=SnapshotTable(db), _db=db)

    async def migrate(self) -> None:
        """Create or upgrade the own schema (idempotent, only inside that schema)."""
        await apply_migrations(self._db)

    async def close(self) -> None:
        await self._db.close()
