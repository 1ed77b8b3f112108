"""Decisions: the fenced writes that act on them, their audit rows, and the outbox of events.

Each write is one transaction that checks the writer's lease first (SPEC 7), and an event is
written with its audit row, so none is published without its record or lost while Redis is down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from reconciler.model import Action, Delete, Event, Flag, InstanceMemory, Outcome, StatusChange
from reconciler.store.changes import WriteLog
from reconciler.store.db import Database, rows_affected
from reconciler.store.errors import StoreError
from reconciler.store.memory import retire_tombstones, write_observation
from reconciler.store.rows import LeaseToken, OutboxEvent, row_of, status_change

if TYPE_CHECKING:
    from reconciler.store.db import Conn


class DecisionTables:
    def __init__(self, db: Database, writes: WriteLog) -> None:
        self._db = db
        self._names = db.names
        self._writes = writes
        """Notes the observations and duplicate groups written here, for `MemoryTables.save`."""

    # --- writes that act on decisions ----------------------------------------------------------

    async def update_status(
        self, action: StatusChange, *, event: Event | None, lease: LeaseToken | None
    ) -> bool:
        """Apply a status change guarded by the status read; False when the application won."""
        if action.row_id is None or action.expected_status is None:
            raise ValueError(f"{action.kind.value} of {action.instance_name} lacks row_id or "
                             "expected_status")
        status, reason = status_change(action)
        leases = [lease] if lease else []
        async with self._db.transaction("updating an integration's status", leases) as conn:
            changed = rows_affected(await conn.execute(
                f"UPDATE {self._names.table}"
                " SET status = $2, disconnect_reason = $3, updated_at = now()"
                " WHERE id = $1 AND status = $4 AND type = 'whatsapp' AND provider = 'evolution'",
                action.row_id, status, reason, action.expected_status,
            ))
            if changed == 0:
                return False
            if changed != 1:
                raise StoreError(f"status update of row {action.row_id} matched {changed} rows;"
                                 " rolled back")
            await self._audit(conn, action, Outcome.OK, None, event, lease)
        return True

    async def record(
        self,
        action: Action,
        outcome: Outcome,
        *,
        error: str | None = None,
        event: Event | None = None,
        lease: LeaseToken | None = None,
    ) -> None:
        leases = [lease] if lease else []
        async with self._db.transaction("recording an action", leases) as conn:
            await self._audit(conn, action, outcome, error, event, lease)

    async def record_many(
        self,
        entries: Sequence[tuple[Action, Outcome, LeaseToken | None]],
    ) -> None:
        """Audit many actions that publish nothing (blocked, dry run) in one transaction: a dry
        run over a large fleet must not cost a transaction per instance."""
        if not entries:
            return
        leases = list({lease for _, _, lease in entries if lease is not None})
        async with self._db.transaction("recording actions", leases) as conn:
            await conn.executemany(
                f"INSERT INTO {self._names.own}.audit_log (server, instance_name,"
                " organization_id, row_id, action, reason, guard, outcome, epoch)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [(a.server, a.instance_name, a.organization_id, row_of(a), a.kind.value, a.reason,
                  a.blocked_by.value if a.blocked_by else None, outcome.value,
                  lease.epoch if lease else None) for a, outcome, lease in entries])

    async def check_lease(self, lease: LeaseToken) -> None:
        """Right before a call to Evolution: LeaseLost if the pass may no longer act."""
        await self._db.check("checking a lease", [lease])

    async def begin_delete(self, entry: InstanceMemory, *, lease: LeaseToken) -> None:
        """Persist a delete's intent and its event id before the first call (SPEC 5): whatever
        happens after, a later pass owes `instance.removed` under that one id."""
        with self._writes.writing(observations=[(entry.server, entry.instance_name)]):
            async with self._db.transaction("recording a delete's intent", [lease]) as conn:
                await write_observation(conn, self._names, entry)

    async def record_delete_failure(
        self, action: Delete, entry: InstanceMemory, error: str, *, lease: LeaseToken
    ) -> None:
        """A failed or unverified attempt: its audit row and the backoff, in one transaction."""
        with self._writes.writing(observations=[(entry.server, entry.instance_name)]):
            async with self._db.transaction("recording a failed delete", [lease]) as conn:
                await self._audit(conn, action, Outcome.FAILED, error, None, lease)
                await write_observation(conn, self._names, entry)

    async def confirm_removal(
        self, action: Delete, event: Event, *, lease: LeaseToken
    ) -> bool:
        """The removal verified: its audit row, its event, and forgetting the intent, in one
        transaction, so no crash can publish it twice. False when the intent is already
        confirmed (nothing is written)."""
        with self._writes.writing(observations=[(action.server, action.instance_name)]):
            async with self._db.transaction("confirming a removal", [lease]) as conn:
                owed = await conn.fetchval(
                    f"DELETE FROM {self._names.own}.observations WHERE server = $1"
                    " AND instance_name = $2 AND delete_event_id = $3 RETURNING true",
                    action.server, action.instance_name, event.event_id)
                if not owed:
                    return False
                await self._audit(conn, action, Outcome.OK, None, event, lease)
                await retire_tombstones(conn, self._names, [action.instance_name])
        return True

    async def record_flag(
        self, action: Flag, event: Event, *, lease: LeaseToken
    ) -> bool:
        """A duplicate group reported with its event, once: False if it was reported already."""
        if action.group_key is None:
            raise ValueError(f"flag of {action.instance_name} lacks its group key")
        with self._writes.writing(duplicates=[action.group_key]):
            async with self._db.transaction("recording a duplicate", [lease]) as conn:
                new = await conn.fetchval(
                    f"INSERT INTO {self._names.own}.reported_duplicates (group_key)"
                    " VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", action.group_key)
                if not new:
                    return False
                await self._audit(conn, action, Outcome.OK, None, event, lease)
        return True

    async def _audit(
        self,
        conn: Conn,
        action: Action,
        outcome: Outcome,
        error: str | None,
        event: Event | None,
        lease: LeaseToken | None,
    ) -> None:
        """The audit row and, with an event, its outbox row: callers hold the transaction."""
        own = self._names.own
        event_id = event.event_id if event is not None else None
        await conn.execute(
            f"INSERT INTO {own}.audit_log (server, instance_name, organization_id, row_id, action,"
            " reason, guard, outcome, error, event_id, epoch)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            action.server, action.instance_name, action.organization_id, row_of(action),
            action.kind.value, action.reason,
            action.blocked_by.value if action.blocked_by else None,
            outcome.value, error, event_id, lease.epoch if lease else None,
        )
        if event is not None:
            await conn.execute(
                f"INSERT INTO {own}.outbox (event_id, instance_name, payload)"
                " VALUES ($1, $2, $3)",
                event_id, action.instance_name, event.payload(),
            )

    # --- reading the audit log -----------------------------------------------------------------

    async def audit_rows(
        self,
        *,
        instance_name: str | None = None,
        limit: int = 100,
        since_seconds: float | None = None,
        action: str | None = None,
        outcome: str | None = None,
    ) -> list[dict[str, object]]:
        """The newest audit rows first, filtered as `audit` asks (SPEC 8 `audit`, `explain`)."""
        async with self._db.snapshot("reading the audit log") as conn:
            rows = await conn.fetch(
                "SELECT id, at, server, instance_name, organization_id, row_id, action, reason,"
                " guard, outcome, error, event_id, epoch"
                f" FROM {self._names.own}.audit_log"
                " WHERE ($1::text IS NULL OR instance_name = $1)"
                " AND ($3::float8 IS NULL OR at >= now() - make_interval(secs => $3))"
                " AND ($4::text IS NULL OR action = $4) AND ($5::text IS NULL OR outcome = $5)"
                " ORDER BY id DESC LIMIT $2",
                instance_name, limit, since_seconds, action, outcome,
            )
        return [dict(r) for r in rows]


class OutboxTable:
    """The events `DecisionTables` wrote with their audit rows, until the relay publishes them."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._names = db.names

    async def pending(self, limit: int = 500) -> list[OutboxEvent]:
        async with self._db.snapshot("reading the outbox") as conn:
            rows = await conn.fetch(
                f"SELECT id, event_id, instance_name, payload FROM {self._names.own}.outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT $1", limit)
        return [OutboxEvent(r["id"], r["event_id"], r["instance_name"], r["payload"])
                for r in rows]

    async def mark_published(self, ids: Sequence[int]) -> None:
        async with self._db.transaction("marking events published") as conn:
            await conn.execute(
                f"UPDATE {self._names.own}.outbox SET published_at = now()"
                " WHERE id = ANY($1::bigint[]) AND published_at IS NULL", list(ids))

    async def prune(self, keep_seconds: float = 7 * 86400) -> int:
        """Forget events published longer ago than `keep_seconds` (the audit log keeps the
        record of every action; the outbox only has to outlive a Redis outage)."""
        async with self._db.transaction("pruning the outbox") as conn:
            return rows_affected(await conn.execute(
                f"DELETE FROM {self._names.own}.outbox WHERE published_at IS NOT NULL"
                " AND published_at < now() - make_interval(secs => $1)", keep_seconds))

    async def count_pending(self) -> int:
        async with self._db.snapshot("counting the outbox") as conn:
            count = await conn.fetchval(
                f"SELECT count(*) FROM {self._names.own}.outbox WHERE published_at IS NULL")
        return int(count)
