"""The PostgreSQL adapter: desired state, the daemon's own schema, fenced writes, the outbox."""

from reconciler.store.errors import IntegrationsTableMissing, LeaseLost, StoreError
from reconciler.store.rows import LeaseToken, OutboxEvent
from reconciler.store.store import Store

__all__ = [
    "IntegrationsTableMissing",
    "LeaseLost",
    "LeaseToken",
    "OutboxEvent",
    "Store",
    "StoreError",
]
