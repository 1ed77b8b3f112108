"""The daemon's memory between passes: observations, counts, streaks, duplicates, tombstones.

The SQL of the observations and tombstones tables lives here only; the fenced decision writes of
`DecisionTables` call `write_observation` and `retire_tombstones` inside their own transactions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import asyncpg
from anyio.streams.memory import MemoryObjectReceiveStream

from reconciler.hints import Hint
from reconciler.model import InstanceMemory, Memory, PassCounts, Tombstone
from reconciler.store.cache import RowCache
from reconciler.store.changes import Key, MemoryChanges, WriteLog, memory_changes
from reconciler.store.db import DB_ERRORS, Database
from reconciler.store.names import SqlNames
from reconciler.store.rows import (
    OBSERVATION_COLUMNS,
    LeaseToken,
    instance_memory,
    observation_row,
)

if TYPE_CHECKING:
    from reconciler.store.db import Conn

_NOTIFY_BUFFER = 1000
"""NOTIFYs are hints (the tombstones table is the truth): beyond this many unread, drop them."""


async def write_observation(conn: Conn, names: SqlNames, entry: InstanceMemory) -> None:
    """Upsert one instance's memory; the caller holds the (fenced) transaction."""
    columns = ", ".join(OBSERVATION_COLUMNS)
    values = ", ".join(f"${i}" for i in range(1, len(OBSERVATION_COLUMNS) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in OBSERVATION_COLUMNS[2:])
    await conn.execute(
        f"INSERT INTO {names.own}.observations ({columns}) VALUES ({values})"
        f" ON CONFLICT (server, instance_name) DO UPDATE SET {updates}, updated_at = now()",
        *observation_row(entry))


async def retire_tombstones(conn: Conn, names: SqlNames, instance_names: Collection[str]) -> None:
    """The one place a tombstone is retired; the caller holds the (fenced) transaction."""
    await conn.execute(
        f"DELETE FROM {names.own}.tombstones WHERE instance_name = ANY($1::text[])",
        list(instance_names))


class MemoryTables:
    def __init__(self, db: Database, writes: WriteLog) -> None:
        self._db = db
        self._names = db.names
        self._writes = writes
        self._entries: RowCache[asyncpg.Record, tuple[Key, InstanceMemory]] = RowCache(
            lambda row: ((row["server"], row["instance_name"]), instance_memory(row)))
        """The last load's entries by their whole row: an unchanged row is not decoded again."""
        self._loaded: tuple[Memory, int] | None = None
        """The last load and its mark in `_writes`, until a save: the one baseline `save` trusts."""

    async def load(self) -> Memory:
        own = self._names.own
        self._loaded = None
        mark = self._writes.mark()
        async with self._db.snapshot("loading memory") as conn:
            observations = await conn.fetch(
                f"SELECT {', '.join(OBSERVATION_COLUMNS)} FROM {own}.observations")
            counts = await conn.fetch(f"SELECT server, desired, observed FROM {own}.pass_counts")
            streaks = await conn.fetch(f"SELECT instance_name, streak FROM {own}.missing_streaks")
            duplicates = await conn.fetch(f"SELECT group_key FROM {own}.reported_duplicates")
            tombstones = await conn.fetch(
                "SELECT instance_name, organization_id, deleted_at"
                f" FROM {own}.tombstones ORDER BY deleted_at, instance_name")
        memory = Memory(
            instances=dict(self._entries.decoded(observations)),
            last_counts={r["server"]: PassCounts(r["desired"], r["observed"]) for r in counts},
            missing_streaks={r["instance_name"]: r["streak"] for r in streaks},
            reported_duplicates=frozenset(r["group_key"] for r in duplicates),
            tombstones={r["instance_name"]: Tombstone(r["instance_name"], r["organization_id"],
                                                      r["deleted_at"]) for r in tombstones},
        )
        self._loaded = (memory, mark)
        return memory

    async def load_for(self, instance_names: Collection[str]) -> Memory:
        """A hint's memory (SPEC 4.5): the observations and tombstones of these names only."""
        own = self._names.own
        wanted = sorted(set(instance_names))
        async with self._db.snapshot("loading memory") as conn:
            observations = await conn.fetch(
                f"SELECT {', '.join(OBSERVATION_COLUMNS)} FROM {own}.observations"
                " WHERE instance_name = ANY($1::text[])", wanted)
            counts = await conn.fetch(f"SELECT server, desired, observed FROM {own}.pass_counts")
            tombstones = await conn.fetch(
                "SELECT instance_name, organization_id, deleted_at"
                f" FROM {own}.tombstones WHERE instance_name = ANY($1::text[])", wanted)
        instances = (instance_memory(r) for r in observations)
        return Memory(
            instances={(m.server, m.instance_name): m for m in instances},
            last_counts={r["server"]: PassCounts(r["desired"], r["observed"]) for r in counts},
            tombstones={r["instance_name"]: Tombstone(r["instance_name"], r["organization_id"],
                                                      r["deleted_at"]) for r in tombstones},
        )

    async def save_instances(
        self, entries: Collection[InstanceMemory], *, lease: LeaseToken
    ) -> None:
        """A hint's observations, upserted one by one under the server's lease."""
        with self._writes.writing(observations=[(e.server, e.instance_name) for e in entries]):
            async with self._db.transaction("saving observations", [lease]) as conn:
                for entry in entries:
                    await write_observation(conn, self._names, entry)

    async def save(
        self,
        memory: Memory,
        *,
        servers: Collection[str],
        leases: Mapping[str, LeaseToken] | None = None,
        fleet: bool = True,
        keep: Collection[tuple[str, str]] = (),
        baseline: Memory | None = None,
    ) -> None:
        """Replace the memory of `servers`, and with `fleet` (the leader of the first server)
        the missing streaks and forget the duplicate groups that cleared. The observations of
        `keep` (written by a hint since the pass loaded them) stay as they are.

        With `baseline`, the memory this pass loaded, only what changed since is written (see
        `memory_changes`), to the same end; unless another load or save came in between, when
        nothing tells what the table holds and it is replaced.

        Tombstones are not written here: the trigger adds them and `retire_tombstones` removes
        the processed ones, so one deleted while this pass ran is never lost. Only the leader
        of the first server writes the fleet's memory: it alone reports duplicate groups
        (`record_flag` records each with its event) and marks instances missing.
        """
        loaded, self._loaded = self._loaded, None
        touched = (self._writes.since(loaded[1])
                   if baseline is not None and loaded is not None and loaded[0] is baseline
                   else None)
        tokens = (leases or {}).values()
        if baseline is None or touched is None:
            await self._replace(memory, servers=servers, leases=tokens, fleet=fleet, keep=keep)
            return
        changes = memory_changes(memory, baseline, touched, servers=servers, fleet=fleet,
                                 keep=keep)
        async with self._db.transaction("saving memory", tokens) as conn:
            await self._write(conn, changes)

    async def _write(self, conn: Conn, changes: MemoryChanges) -> None:
        """Apply `changes`; a rewritten row is removed and copied in again, as `_replace` does."""
        own = self._names.own
        rewritten = (*changes.observations_removed,
                     *((m.server, m.instance_name) for m in changes.observations_written))
        if rewritten:
            await conn.execute(
                f"DELETE FROM {own}.observations WHERE (server, instance_name) IN"
                " (SELECT * FROM unnest($1::text[], $2::text[]))",
                [s for s, _ in rewritten], [n for _, n in rewritten])
        if changes.observations_written:
            await conn.copy_records_to_table(
                "observations", schema_name=self._names.schema, columns=OBSERVATION_COLUMNS,
                records=[observation_row(m) for m in changes.observations_written])
        counted = [*changes.counts_removed, *(s for s, _ in changes.counts_written)]
        if counted:
            await conn.execute(f"DELETE FROM {own}.pass_counts WHERE server = ANY($1::text[])",
                               counted)
        if changes.counts_written:
            await conn.executemany(
                f"INSERT INTO {own}.pass_counts (server, desired, observed) VALUES ($1, $2, $3)",
                [(s, c.desired, c.observed) for s, c in changes.counts_written])
        streaked = [*changes.streaks_removed, *(n for n, _ in changes.streaks_written)]
        if streaked:
            await conn.execute(
                f"DELETE FROM {own}.missing_streaks WHERE instance_name = ANY($1::text[])",
                streaked)
        if changes.streaks_written:
            await conn.execute(
                f"INSERT INTO {own}.missing_streaks (instance_name, streak)"
                " SELECT * FROM unnest($1::text[], $2::integer[])",
                [n for n, _ in changes.streaks_written], [s for _, s in changes.streaks_written])
        if changes.duplicates_removed:
            await conn.execute(
                f"DELETE FROM {own}.reported_duplicates WHERE group_key = ANY($1::text[])",
                list(changes.duplicates_removed))
        if changes.duplicates_added:
            await conn.execute(
                f"INSERT INTO {own}.reported_duplicates (group_key)"
                " SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                list(changes.duplicates_added))

    async def _replace(
        self,
        memory: Memory,
        *,
        servers: Collection[str],
        leases: Iterable[LeaseToken],
        fleet: bool,
        keep: Collection[tuple[str, str]],
    ) -> None:
        own = self._names.own
        chosen = sorted(set(servers))
        kept = set(keep)
        observations = [observation_row(m) for k, m in memory.instances.items()
                        if m.server in chosen and k not in kept]
        counts = [(s, c.desired, c.observed) for s, c in memory.last_counts.items()
                  if s in chosen]
        async with self._db.transaction("saving memory", leases) as conn:
            await conn.execute(
                f"DELETE FROM {own}.observations WHERE server = ANY($1::text[])"
                " AND NOT (server || chr(31) || instance_name) = ANY($2::text[])",
                chosen, [f"{s}\x1f{n}" for s, n in kept])
            if observations:
                await conn.copy_records_to_table(
                    "observations", schema_name=self._names.schema,
                    columns=OBSERVATION_COLUMNS, records=observations)
            await conn.execute(f"DELETE FROM {own}.pass_counts WHERE server = ANY($1::text[])",
                               chosen)
            if counts:
                await conn.executemany(
                    f"INSERT INTO {own}.pass_counts (server, desired, observed)"
                    " VALUES ($1, $2, $3)", counts)
            if not fleet:
                return
            await conn.execute(f"DELETE FROM {own}.missing_streaks")
            if memory.missing_streaks:
                await conn.executemany(
                    f"INSERT INTO {own}.missing_streaks (instance_name, streak) VALUES ($1, $2)",
                    list(memory.missing_streaks.items()))
            duplicates = sorted(memory.reported_duplicates)
            await conn.execute(
                f"DELETE FROM {own}.reported_duplicates WHERE NOT group_key = ANY($1::text[])",
                duplicates)
            await conn.execute(
                f"INSERT INTO {own}.reported_duplicates (group_key)"
                " SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", duplicates)

    async def retire_tombstones(
        self, instance_names: Collection[str], *, leases: Iterable[LeaseToken] = ()
    ) -> None:
        """Forget the tombstones a pass has processed (the planner decides which)."""
        async with self._db.transaction("retiring tombstones", leases) as conn:
            await retire_tombstones(conn, self._names, instance_names)

    async def pass_hint(self, hint: Hint) -> None:
        """Hand a hint to the replicas listening (the leader of its server takes it)."""
        async with self._db.transaction("passing a hint on") as conn:
            await conn.execute("SELECT pg_notify($1, $2)", self._names.hint_channel,
                               hint.to_json())

    @asynccontextmanager
    async def listen_hints(self) -> AsyncIterator[MemoryObjectReceiveStream[Hint]]:
        """Hints as NOTIFYs arrive, on a connection of their own: the deletion trigger's
        tombstones, the row trigger's changes and the hints other replicas pass on.

        The stream ends when that connection is lost; the caller listens again, and runs a pass
        (whose `load` reads every tombstone) to catch what it missed.
        """
        send, receive = anyio.create_memory_object_stream[Hint](max_buffer_size=_NOTIFY_BUFFER)
        tombstones = self._names.tombstone_channel

        def on_notify(_conn: object, _pid: int, channel: str, payload: object) -> None:
            hint = (Hint("tombstone", "", str(payload)) if channel == tombstones
                    else Hint.from_json(str(payload)))
            if hint is None:
                return
            with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError,
                                     anyio.BrokenResourceError):
                send.send_nowait(hint)

        def on_terminate(_conn: object) -> None:
            send.close()

        with self._db.failures("listening for hints"):
            conn = await asyncpg.connect(
                self._db.dsn, timeout=10,
                server_settings={"application_name": "evolution-reconciler-listen"})
        try:
            conn.add_termination_listener(on_terminate)
            with self._db.failures("listening for hints"):
                await conn.add_listener(tombstones, on_notify)
                await conn.add_listener(self._names.hint_channel, on_notify)
            with receive:
                yield receive
        finally:
            send.close()
            with contextlib.suppress(*DB_ERRORS):
                await conn.close(timeout=5)
