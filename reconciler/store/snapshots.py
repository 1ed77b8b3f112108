"""Each server's latest complete read, kept by its leader for the decisions that span servers.

SPEC 7: every server is read once per interval, by its leader. The leader of the first server
takes `missing` and the cross-server duplicates from these snapshots, and only from fresh ones
(younger than two intervals), so no decision is taken on a stale or partial view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.model import LiveState, ObservedInstance, ServerInventory
from reconciler.store.db import Database, rows_affected
from reconciler.store.rows import LIVE_STATES, LeaseToken

if TYPE_CHECKING:
    from reconciler.store.db import Conn

Content = tuple[str, str | None, str | None, tuple[tuple[str, str | None, str], ...]]
"""What a snapshot holds besides its time: api line, version, client name, instances (tuples,
which the garbage collector stops tracking, and which encode as JSON arrays)."""


class SnapshotTable:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._own = db.names.own
        self._saved: dict[str, tuple[LeaseToken, Content]] = {}
        """What this process last saved of each server, and under which lease: while both
        hold, the row holds it still (no other holder writes under that epoch)."""

    async def save(self, read: ServerInventory, *, lease: LeaseToken) -> None:
        """Replace the server's snapshot; fenced, so a replica that lost the lease cannot.
        Unchanged since this process saved it under the same lease, only its time moves."""
        content: Content = (read.api_line, read.version, read.client_name,
                            tuple((i.name, i.number, i.live.value) for i in read.instances))
        saved = self._saved.pop(read.server, None)
        if saved != (lease, content):
            saved = None
        async with self._db.transaction("saving a snapshot", [lease]) as conn:
            if not (saved and await self._touch(conn, read.server, lease)):
                await conn.execute(
                    f"INSERT INTO {self._own}.snapshots AS s (server, taken_at, epoch, api_line,"
                    " version, client_name, instances) VALUES ($1, now(), $2, $3, $4, $5, $6)"
                    " ON CONFLICT (server) DO UPDATE SET taken_at = now(),"
                    " epoch = EXCLUDED.epoch, api_line = EXCLUDED.api_line,"
                    " version = EXCLUDED.version, client_name = EXCLUDED.client_name,"
                    " instances = EXCLUDED.instances",
                    read.server, lease.epoch, *content)
        # Unchanged, the copy kept is the old one: what outlives a pass costs the collector.
        self._saved[read.server] = saved or (lease, content)

    async def _touch(self, conn: Conn, server: str, lease: LeaseToken) -> bool:
        """Move the snapshot's time to now; False if its row is not the one of `lease`."""
        return rows_affected(await conn.execute(
            f"UPDATE {self._own}.snapshots SET taken_at = now()"
            " WHERE server = $1 AND epoch = $2", server, lease.epoch)) == 1

    async def fresh(self, servers: list[str], max_age: float) -> dict[str, ServerInventory]:
        """The snapshots of `servers` taken within `max_age` seconds (by the database's clock)."""
        async with self._db.snapshot("reading snapshots") as conn:
            rows = await conn.fetch(
                f"SELECT server, api_line, version, client_name, instances"
                f" FROM {self._own}.snapshots WHERE server = ANY($1::text[])"
                " AND taken_at > now() - make_interval(secs => $2)", servers, max_age)
        return {r["server"]: ServerInventory(
            server=r["server"], api_line=r["api_line"], version=r["version"],
            client_name=r["client_name"],
            instances=tuple(
                ObservedInstance(server=r["server"], name=name, stored_status=None,
                                 live=LIVE_STATES.get(live, LiveState.UNKNOWN), owner_jid=None,
                                 number=number, created_at=None, disconnect=None)
                for name, number, live in r["instances"]))
            for r in rows}
