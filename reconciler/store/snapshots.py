"""Each server's latest complete read, kept by its leader for the decisions that span servers.

SPEC 7: every server is read once per interval, by its leader. The leader of the first server
takes `missing` and the cross-server duplicates from these snapshots, and only from fresh ones
(younger than two intervals), so no decision is taken on a stale or partial view.
"""

from __future__ import annotations

from reconciler.model import LiveState, ObservedInstance, ServerInventory
from reconciler.store.db import Database
from reconciler.store.rows import LeaseToken

_LIVE = {s.value: s for s in LiveState}


class SnapshotTable:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._own = db.names.own

    async def save(self, read: ServerInventory, *, lease: LeaseToken) -> None:
        """Replace the server's snapshot; fenced, so a replica that lost the lease cannot."""
        instances = [[i.name, i.number, i.live.value] for i in read.instances]
        async with self._db.transaction("saving a snapshot", [lease]) as conn:
            await conn.execute(
                f"INSERT INTO {self._own}.snapshots AS s (server, taken_at, epoch, api_line,"
                " version, client_name, instances) VALUES ($1, now(), $2, $3, $4, $5, $6)"
                " ON CONFLICT (server) DO UPDATE SET taken_at = now(), epoch = EXCLUDED.epoch,"
                " api_line = EXCLUDED.api_line, version = EXCLUDED.version,"
                " client_name = EXCLUDED.client_name, instances = EXCLUDED.instances",
                read.server, lease.epoch, read.api_line, read.version, read.client_name,
                instances)

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
                                 live=_LIVE.get(live, LiveState.UNKNOWN), owner_jid=None,
                                 number=number, created_at=None, disconnect=None)
                for name, number, live in r["instances"]))
            for r in rows}
