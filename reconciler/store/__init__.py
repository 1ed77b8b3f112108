"""The PostgreSQL adapter, cut by role: desired state, memory, decisions and outbox, leases."""

from reconciler.store.errors import IntegrationsTableMissing, LeaseLost, StoreError
from reconciler.store.ports import (
    DecisionLog,
    DesiredSource,
    LeaseStore,
    MemoryStore,
    Outbox,
    SnapshotStore,
)
from reconciler.store.rows import LeaseToken, OutboxEvent
from reconciler.store.store import Store

__all__ = [
    "DecisionLog",
    "DesiredSource",
    "IntegrationsTableMissing",
    "LeaseLost",
    "LeaseStore",
    "LeaseToken",
    "MemoryStore",
    "Outbox",
    "OutboxEvent",
    "SnapshotStore",
    "Store",
    "StoreError",
]
