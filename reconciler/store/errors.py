"""What the store raises, so callers can tell an outage from a configuration error or lost lease."""

from __future__ import annotations


class StoreError(Exception):
    """The database was unreachable or a query failed; the message never holds a password."""


class IntegrationsTableMissing(StoreError):
    """The configured integrations table does not exist or lacks a column the daemon needs."""


class LeaseLost(StoreError):
    """A fenced write found its lease or epoch no longer current: nothing was written."""
