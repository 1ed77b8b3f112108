"""Leases: one row per server, whose epoch fences every write of its holder; and the replicas
that share them, by heartbeat (SPEC 7)."""

from __future__ import annotations

from reconciler.store.db import Database, rows_affected
from reconciler.store.rows import LeaseToken


class LeaseTable:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._own = db.names.own

    async def acquire(
        self, server: str, holder: str, ttl: float = 15.0, *, take_over: bool = False
    ) -> LeaseToken | None:
        """Take the lease if free, expired or ours; a new term (epoch + 1) unless ours and live.

        `take_over` takes it from a live holder too (an operator's `once`): the new epoch fences
        the old holder off, and a fenced write in flight finishes first (it locks the row).
        """
        async with self._db.transaction("acquiring a lease") as conn:
            row = await conn.fetchrow(
                f"INSERT INTO {self._own}.leases AS l (server, holder, epoch, expires_at)"
                " VALUES ($1, $2, 1, now() + make_interval(secs => $3))"
                " ON CONFLICT (server) DO UPDATE SET"
                "   holder = EXCLUDED.holder,"
                "   epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()"
                "           THEN l.epoch ELSE l.epoch + 1 END,"
                "   acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()"
                "                 THEN l.acquired_at ELSE now() END,"
                "   renewed_at = now(),"
                "   expires_at = EXCLUDED.expires_at"
                " WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now() OR $4"
                " RETURNING epoch",
                server, holder, ttl, take_over,
            )
        return None if row is None else LeaseToken(server, holder, row["epoch"])

    async def renew(self, token: LeaseToken, ttl: float = 15.0) -> bool:
        async with self._db.transaction("renewing a lease") as conn:
            changed = rows_affected(await conn.execute(
                f"UPDATE {self._own}.leases"
                " SET expires_at = now() + make_interval(secs => $4), renewed_at = now()"
                " WHERE server = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                token.server, token.holder, token.epoch, ttl,
            ))
        return changed == 1

    async def release(self, token: LeaseToken) -> None:
        """Expire the lease now; the row stays, so epochs keep rising across holders."""
        async with self._db.transaction("releasing a lease") as conn:
            await conn.execute(
                f"UPDATE {self._own}.leases SET expires_at = now()"
                " WHERE server = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                token.server, token.holder, token.epoch,
            )

    async def heartbeat(self, holder: str, live_within: float = 15.0) -> int:
        """Say this replica is alive; the number of live replicas (itself included)."""
        async with self._db.transaction("heartbeating") as conn:
            await conn.execute(
                f"INSERT INTO {self._own}.replicas (holder) VALUES ($1) ON CONFLICT (holder)"
                " DO UPDATE SET heartbeat_at = now()", holder)
            live = await conn.fetchval(
                f"SELECT count(*) FROM {self._own}.replicas"
                " WHERE heartbeat_at > now() - make_interval(secs => $1)", live_within)
        return max(1, int(live))

    async def unled(self, servers: list[str]) -> set[str]:
        """The servers of `servers` whose lease is free (never taken, expired or released)."""
        async with self._db.snapshot("reading leases") as conn:
            rows = await conn.fetch(
                f"SELECT server FROM {self._own}.leases WHERE server = ANY($1::text[])"
                " AND expires_at > now()", servers)
        return set(servers) - {r["server"] for r in rows}

    async def leave(self, holder: str) -> None:
        """A replica stopping: the others count one fewer at once, not after its heartbeat ages."""
        async with self._db.transaction("leaving the replicas") as conn:
            await conn.execute(f"DELETE FROM {self._own}.replicas WHERE holder = $1", holder)
