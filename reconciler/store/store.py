"""The PostgreSQL store: desired rows, the daemon's own schema, fenced writes and the outbox.

Each write that acts on a decision is one transaction that first checks, under a row lock, that the
writer's lease is still current (SPEC 7): a replica that lost its lease writes nothing more.
Timestamps the daemon records come from the database's clock, so replicas never disagree.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import unquote, urlsplit

import anyio
import asyncpg
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from reconciler.model import (
    Action,
    Delete,
    DesiredInstance,
    DesiredState,
    Flag,
    InstanceMemory,
    Memory,
    Outcome,
    PassCounts,
    StatusChange,
    Tombstone,
)
from reconciler.names import instance_key
from reconciler.store.errors import IntegrationsTableMissing, LeaseLost, StoreError
from reconciler.store.names import SqlNames
from reconciler.store.rows import (
    DESIRED_COLUMNS,
    OBSERVATION_COLUMNS,
    InvalidRow,
    LeaseToken,
    OutboxEvent,
    desired_from_row,
    event_id_of,
    instance_memory,
    observation_row,
    row_of,
    status_change,
)
from reconciler.store.schema import MIGRATIONS, TRIGGER, TRIGGER_FUNCTION, VERSION_TABLE, render

log = structlog.get_logger(__name__)

_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""Everything the driver raises for database trouble (InternalClientError: "another operation
is in progress" on a connection a cancelled call left busy) is a StoreError, never a bug."""
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_DB_ERRORS, ValueError)
"""A malformed DSN is a ValueError, whose message may quote the DSN: redacted like the rest."""
_TABLE_ERRORS = (
    asyncpg.UndefinedTableError,
    asyncpg.InvalidSchemaNameError,
    asyncpg.UndefinedColumnError,
)
_REQUIRED_COLUMNS = {
    "id": None,
    "organization_id": None,
    "type": None,
    "provider": None,
    "enabled": None,
    "status": None,
    "disconnect_reason": None,
    "config": "jsonb",
    "updated_at": None,
}
"""Columns the daemon reads or writes; the value, when set, is the type it relies on."""
_NOTIFY_BUFFER = 1000
"""NOTIFYs are hints (the tombstones table is the truth): beyond this many unread, drop them."""

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Conn: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]


def _passwords(dsn: str) -> tuple[str, ...]:
    """Every spelling of the DSN's password, so that no error message carries it."""
    found: list[str] = re.findall(r"password\s*=\s*'?([^\s'&]+)", dsn)
    with contextlib.suppress(ValueError):
        if password := urlsplit(dsn).password:
            found += [password, unquote(password)]
    return tuple(p for p in found if p)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def _count(status: str) -> int:
    """Rows affected, from a command tag such as `UPDATE 1`."""
    return int(status.rsplit(" ", 1)[-1])


class Store:
    """One connection pool to the database holding both the integrations table and own schema."""

    def __init__(self, pool: Pool, dsn: str, names: SqlNames) -> None:
        self._pool = pool
        self._dsn = dsn
        self._names = names
        self._secrets = _passwords(dsn)

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        integrations_table: str = "healthcare.integrations",
        schema: str = "reconciler",
    ) -> Store:
        names = SqlNames.parse(integrations_table, schema)
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=4,
                init=_init_connection,
                timeout=10,
                command_timeout=60,
                server_settings={"application_name": "evolution-reconciler"},
            )
        except _CONNECT_ERRORS as exc:
            raise StoreError(_redact(f"connecting to the database: {_describe(exc)}",
                                     _passwords(dsn))) from None
        return cls(pool, dsn, names)

    async def close(self) -> None:
        await self._pool.close()

    @property
    def tombstone_channel(self) -> str:
        return self._names.tombstone_channel

    # --- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _failures(self, doing: str, *, table: bool = False) -> Iterator[None]:
        """Turn driver errors into StoreError; with `table`, a missing relation is the table's."""
        try:
            yield
        except _DB_ERRORS as exc:
            if table and isinstance(exc, _TABLE_ERRORS):
                raise IntegrationsTableMissing(
                    f"integrations table {self._names.table_display} is missing or incomplete"
                    f" ({_describe(exc)})"
                ) from exc
            raise StoreError(_redact(f"{doing}: {_describe(exc)}", self._secrets)) from exc

    @asynccontextmanager
    async def _transaction(
        self, doing: str, leases: Iterable[LeaseToken] = (), *, table: bool = False
    ) -> AsyncIterator[Conn]:
        with self._failures(doing, table=table):
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, leases)
                yield conn

    @asynccontextmanager
    async def _snapshot(self, doing: str, *, table: bool = False) -> AsyncIterator[Conn]:
        """A read-only transaction seeing one consistent state of every table it reads."""
        with self._failures(doing, table=table):
            async with self._pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True
            ):
                yield conn

    async def _fence(self, conn: Conn, leases: Iterable[LeaseToken]) -> None:
        """Hold each lease row (FOR SHARE) until commit, so a takeover waits for this write."""
        for token in sorted(leases, key=lambda t: t.server):
            held = await conn.fetchval(
                f"SELECT true FROM {self._names.own}.leases"
                " WHERE server = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()"
                " FOR SHARE",
                token.server, token.holder, token.epoch,
            )
            if not held:
                raise LeaseLost(
                    f"lease of server {token.server!r} (holder {token.holder!r}, "
                    f"epoch {token.epoch}) is no longer current"
                )

    # --- schema --------------------------------------------------------------------------------

    async def migrate(self) -> None:
        own = self._names.own
        async with self._transaction("migrating the own schema") as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                f"evolution-reconciler:migrate:{self._names.schema}",
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {own}")
            await conn.execute(render(VERSION_TABLE, self._names))
            applied = {r["version"] for r in await conn.fetch(
                f"SELECT version FROM {own}.schema_version")}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                await conn.execute(render(migration.sql, self._names))
                await conn.execute(
                    f"INSERT INTO {own}.schema_version (version, description) VALUES ($1, $2)",
                    migration.version, migration.description,
                )
                log.info("schema_migrated", schema=self._names.schema,
                         version=migration.version, description=migration.description)

    async def check_integrations_table(self) -> None:
        table = self._names.table_display
        async with self._snapshot("checking the integrations table") as conn:
            rows = await conn.fetch(
                "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
                " WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                self._names.table,
            )
        if not rows:
            raise IntegrationsTableMissing(f"integrations table {table} does not exist")
        types = {r["attname"]: r["type"] for r in rows}
        missing = sorted(c for c in _REQUIRED_COLUMNS if c not in types)
        if missing:
            raise IntegrationsTableMissing(
                f"integrations table {table} lacks columns: {', '.join(missing)}")
        wrong = sorted(f"{c} is {types[c]}, not {t}" for c, t in _REQUIRED_COLUMNS.items()
                       if t is not None and types[c] != t)
        if wrong:
            raise IntegrationsTableMissing(
                f"integrations table {table} has wrong column types: {', '.join(wrong)}")

    async def install_trigger(self) -> None:
        """Add the deletion trigger of SPEC 4.2 (and the own schema it writes to)."""
        await self.migrate()
        async with self._transaction("installing the deletion trigger", table=True) as conn:
            await conn.execute(render(TRIGGER_FUNCTION, self._names))
            await conn.execute(render(TRIGGER, self._names))
        log.info("trigger_installed", table=self._names.table_display,
                 channel=self._names.tombstone_channel)

    # --- desired state -------------------------------------------------------------------------

    async def read_desired(self) -> DesiredState:
        async with self._snapshot("reading desired state", table=True) as conn:
            rows = await conn.fetch(
                f"SELECT {DESIRED_COLUMNS} FROM {self._names.table}"
                " WHERE type = 'whatsapp' AND provider = 'evolution' ORDER BY id"
            )
        instances: list[DesiredInstance] = []
        invalid = 0
        claimed: set[str] = set()
        for row in rows:
            parsed = desired_from_row(row)
            if isinstance(parsed, InvalidRow):
                invalid += 1
                claimed |= parsed.claims
                log.warning("invalid_integration_row", row_id=str(parsed.row_id),
                            problem=parsed.problem, table=self._names.table_display)
            else:
                instances.append(parsed)
        return DesiredState(instances=tuple(instances), invalid_rows=invalid,
                            claimed=frozenset(claimed))

    async def row_names_instance(
        self, instance_name: str, *, lease: LeaseToken | None = None
    ) -> bool:
        """The point re-check before a delete: a row of the type naming it by the one name rule,
        even a disabled one, or a row that could not be read claiming it, decided as `read_desired`
        decides.

        The SQL only narrows the rows down, with a superset of what may name or claim the key:
        the key is a substring of every spelling of it, and the text of a jsonb holds each string
        verbatim unless JSON escapes a character of it, and then it holds a backslash. A table
        scan, for the few deletes of a pass.

        With `lease`, the decision to delete is fenced too: LeaseLost if it is no longer current.
        """
        key = instance_key(instance_name)
        leases = [lease] if lease else []
        async with self._transaction("re-checking the desired row", leases, table=True) as conn:
            rows = await conn.fetch(
                f"SELECT {DESIRED_COLUMNS} FROM {self._names.table}"
                " WHERE type = 'whatsapp' AND provider = 'evolution'"
                " AND (strpos(config::text, $1) > 0 OR strpos(config::text, chr(92)) > 0)",
                key,
            )
        for row in rows:
            parsed = desired_from_row(row)
            if isinstance(parsed, InvalidRow):
                if key in parsed.claims:
                    return True
            elif instance_key(parsed.instance_name) == key:
                return True
        return False

    # --- writes that act on decisions ----------------------------------------------------------

    async def update_status(
        self, action: StatusChange, *, event: dict[str, object] | None, lease: LeaseToken | None
    ) -> bool:
        """Apply a status change guarded by the status read; False when the application won."""
        if action.row_id is None or action.expected_status is None:
            raise ValueError(f"{action.kind.value} of {action.instance_name} lacks row_id or "
                             "expected_status")
        status, reason = status_change(action)
        leases = [lease] if lease else []
        async with self._transaction("updating an integration's status", leases) as conn:
            changed = _count(await conn.execute(
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
        event: dict[str, object] | None = None,
        lease: LeaseToken | None = None,
    ) -> None:
        leases = [lease] if lease else []
        async with self._transaction("recording an action", leases) as conn:
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
        async with self._transaction("recording actions", leases) as conn:
            await conn.executemany(
                f"INSERT INTO {self._names.own}.audit_log (server, instance_name,"
                " organization_id, row_id, action, reason, guard, outcome, epoch)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [(a.server, a.instance_name, a.organization_id, row_of(a), a.kind.value, a.reason,
                  a.blocked_by.value if a.blocked_by else None, outcome.value,
                  lease.epoch if lease else None) for a, outcome, lease in entries])

    async def check_lease(self, lease: LeaseToken) -> None:
        """Right before a call to Evolution: LeaseLost if the pass may no longer act."""
        async with self._transaction("checking a lease", [lease]):
            pass

    async def begin_delete(self, entry: InstanceMemory, *, lease: LeaseToken) -> None:
        """Persist a delete's intent and its event id before the first call (SPEC 5): whatever
        happens after, a later pass owes `instance.removed` under that one id."""
        async with self._transaction("recording a delete's intent", [lease]) as conn:
            await self._remember(conn, entry)

    async def record_delete_failure(
        self, action: Delete, entry: InstanceMemory, error: str, *, lease: LeaseToken
    ) -> None:
        """A failed or unverified attempt: its audit row and the backoff, in one transaction."""
        async with self._transaction("recording a failed delete", [lease]) as conn:
            await self._audit(conn, action, Outcome.FAILED, error, None, lease)
            await self._remember(conn, entry)

    async def confirm_removal(
        self, action: Delete, event: dict[str, object], *, lease: LeaseToken
    ) -> bool:
        """The removal verified: its audit row, its event, and forgetting the intent, in one
        transaction, so no crash can publish it twice. False when the intent is already
        confirmed (nothing is written)."""
        own = self._names.own
        async with self._transaction("confirming a removal", [lease]) as conn:
            owed = await conn.fetchval(
                f"DELETE FROM {own}.observations WHERE server = $1 AND instance_name = $2"
                " AND delete_event_id = $3 RETURNING true",
                action.server, action.instance_name, event_id_of(event))
            if not owed:
                return False
            await self._audit(conn, action, Outcome.OK, None, event, lease)
            await conn.execute(f"DELETE FROM {own}.tombstones WHERE instance_name = $1",
                               action.instance_name)
        return True

    async def record_flag(
        self, action: Flag, event: dict[str, object], *, lease: LeaseToken
    ) -> bool:
        """A duplicate group reported with its event, once: False if it was reported already."""
        if action.group_key is None:
            raise ValueError(f"flag of {action.instance_name} lacks its group key")
        async with self._transaction("recording a duplicate", [lease]) as conn:
            new = await conn.fetchval(
                f"INSERT INTO {self._names.own}.reported_duplicates (group_key) VALUES ($1)"
                " ON CONFLICT DO NOTHING RETURNING true", action.group_key)
            if not new:
                return False
            await self._audit(conn, action, Outcome.OK, None, event, lease)
        return True

    async def _remember(self, conn: Conn, entry: InstanceMemory) -> None:
        columns = ", ".join(OBSERVATION_COLUMNS)
        values = ", ".join(f"${i}" for i in range(1, len(OBSERVATION_COLUMNS) + 1))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in OBSERVATION_COLUMNS[2:])
        await conn.execute(
            f"INSERT INTO {self._names.own}.observations ({columns}) VALUES ({values})"
            f" ON CONFLICT (server, instance_name) DO UPDATE SET {updates}, updated_at = now()",
            *observation_row(entry))

    async def _audit(
        self,
        conn: Conn,
        action: Action,
        outcome: Outcome,
        error: str | None,
        event: dict[str, object] | None,
        lease: LeaseToken | None,
    ) -> None:
        """The audit row and, with an event, its outbox row: callers hold the transaction."""
        own = self._names.own
        event_id = event_id_of(event) if event is not None else None
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
                event_id, action.instance_name, event,
            )

    # --- memory --------------------------------------------------------------------------------

    async def load_memory(self) -> Memory:
        own = self._names.own
        async with self._snapshot("loading memory") as conn:
            observations = await conn.fetch(
                f"SELECT {', '.join(OBSERVATION_COLUMNS)} FROM {own}.observations")
            counts = await conn.fetch(f"SELECT server, desired, observed FROM {own}.pass_counts")
            streaks = await conn.fetch(f"SELECT instance_name, streak FROM {own}.missing_streaks")
            duplicates = await conn.fetch(f"SELECT group_key FROM {own}.reported_duplicates")
            tombstones = await self._tombstones(conn)
        instances = (instance_memory(r) for r in observations)
        return Memory(
            instances={(m.server, m.instance_name): m for m in instances},
            last_counts={r["server"]: PassCounts(r["desired"], r["observed"]) for r in counts},
            missing_streaks={r["instance_name"]: r["streak"] for r in streaks},
            reported_duplicates=frozenset(r["group_key"] for r in duplicates),
            tombstones={t.instance_name: t for t in tombstones},
        )

    async def save_memory(
        self,
        memory: Memory,
        *,
        servers: Collection[str],
        leases: Mapping[str, LeaseToken] | None = None,
    ) -> None:
        """Replace the memory of `servers`, and the global missing streaks and duplicate groups.

        Tombstones are not written here: the trigger adds them and `drop_tombstones` removes the
        processed ones, so one deleted while this pass ran is never lost.
        """
        own = self._names.own
        chosen = sorted(set(servers))
        observations = [observation_row(m) for m in memory.instances.values()
                        if m.server in chosen]
        counts = [(s, c.desired, c.observed) for s, c in memory.last_counts.items()
                  if s in chosen]
        async with self._transaction("saving memory", (leases or {}).values()) as conn:
            await conn.execute(f"DELETE FROM {own}.observations WHERE server = ANY($1::text[])",
                               chosen)
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

    # --- tombstones ----------------------------------------------------------------------------

    async def _tombstones(self, conn: Conn) -> list[Tombstone]:
        rows = await conn.fetch(
            "SELECT instance_name, organization_id, deleted_at"
            f" FROM {self._names.own}.tombstones ORDER BY deleted_at, instance_name")
        return [Tombstone(r["instance_name"], r["organization_id"], r["deleted_at"])
                for r in rows]

    async def tombstones(self) -> list[Tombstone]:
        async with self._snapshot("reading tombstones") as conn:
            return await self._tombstones(conn)

    async def drop_tombstones(
        self, names: Collection[str], *, leases: Iterable[LeaseToken] = ()
    ) -> None:
        async with self._transaction("dropping tombstones", leases) as conn:
            await conn.execute(
                f"DELETE FROM {self._names.own}.tombstones WHERE instance_name = ANY($1::text[])",
                list(names))

    @asynccontextmanager
    async def listen_tombstones(self) -> AsyncIterator[MemoryObjectReceiveStream[str]]:
        """Instance names as the trigger's NOTIFYs arrive, on a connection of their own.

        The stream ends when that connection is lost; the caller listens again, and reads
        `tombstones()` to catch what it missed.
        """
        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=_NOTIFY_BUFFER)

        def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError,
                                     anyio.BrokenResourceError):
                send.send_nowait(str(payload))

        def on_terminate(_conn: object) -> None:
            send.close()

        with self._failures("listening for tombstones"):
            conn = await asyncpg.connect(
                self._dsn, timeout=10,
                server_settings={"application_name": "evolution-reconciler-listen"})
        try:
            conn.add_termination_listener(on_terminate)
            with self._failures("listening for tombstones"):
                await conn.add_listener(self._names.tombstone_channel, on_notify)
            with receive:
                yield receive
        finally:
            send.close()
            with contextlib.suppress(*_DB_ERRORS):
                await conn.close(timeout=5)

    # --- outbox --------------------------------------------------------------------------------

    async def pending_events(self, limit: int = 500) -> list[OutboxEvent]:
        async with self._snapshot("reading the outbox") as conn:
            rows = await conn.fetch(
                f"SELECT id, event_id, instance_name, payload FROM {self._names.own}.outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT $1", limit)
        return [OutboxEvent(r["id"], r["event_id"], r["instance_name"], r["payload"])
                for r in rows]

    async def mark_published(self, ids: Sequence[int]) -> None:
        async with self._transaction("marking events published") as conn:
            await conn.execute(
                f"UPDATE {self._names.own}.outbox SET published_at = now()"
                " WHERE id = ANY($1::bigint[]) AND published_at IS NULL", list(ids))

    async def prune_outbox(self, keep_seconds: float = 7 * 86400) -> int:
        """Forget events published longer ago than `keep_seconds` (the audit log keeps the
        record of every action; the outbox only has to outlive a Redis outage)."""
        async with self._transaction("pruning the outbox") as conn:
            return _count(await conn.execute(
                f"DELETE FROM {self._names.own}.outbox WHERE published_at IS NOT NULL"
                " AND published_at < now() - make_interval(secs => $1)", keep_seconds))

    async def outbox_pending(self) -> int:
        async with self._snapshot("counting the outbox") as conn:
            count = await conn.fetchval(
                f"SELECT count(*) FROM {self._names.own}.outbox WHERE published_at IS NULL")
        return int(count)

    # --- leases --------------------------------------------------------------------------------

    async def acquire_lease(
        self, server: str, holder: str, ttl: float = 15.0, *, take_over: bool = False
    ) -> LeaseToken | None:
        """Take the lease if free, expired or ours; a new term (epoch + 1) unless ours and live.

        `take_over` takes it from a live holder too (an operator's `once`): the new epoch fences
        the old holder off, and a fenced write in flight finishes first (it locks the row).
        """
        async with self._transaction("acquiring a lease") as conn:
            row = await conn.fetchrow(
                f"INSERT INTO {self._names.own}.leases AS l (server, holder, epoch, expires_at)"
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

    async def renew_lease(self, token: LeaseToken, ttl: float = 15.0) -> bool:
        async with self._transaction("renewing a lease") as conn:
            changed = _count(await conn.execute(
                f"UPDATE {self._names.own}.leases"
                " SET expires_at = now() + make_interval(secs => $4), renewed_at = now()"
                " WHERE server = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                token.server, token.holder, token.epoch, ttl,
            ))
        return changed == 1

    async def release_lease(self, token: LeaseToken) -> None:
        """Expire the lease now; the row stays, so epochs keep rising across holders."""
        async with self._transaction("releasing a lease") as conn:
            await conn.execute(
                f"UPDATE {self._names.own}.leases SET expires_at = now()"
                " WHERE server = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                token.server, token.holder, token.epoch,
            )

    # --- reading the audit log -----------------------------------------------------------------

    async def audit_rows(
        self, *, instance_name: str | None = None, limit: int = 100
    ) -> list[dict[str, object]]:
        """The newest audit rows first, optionally of one instance."""
        async with self._snapshot("reading the audit log") as conn:
            rows = await conn.fetch(
                "SELECT id, at, server, instance_name, organization_id, row_id, action, reason,"
                " guard, outcome, error, event_id, epoch"
                f" FROM {self._names.own}.audit_log"
                " WHERE $1::text IS NULL OR instance_name = $1 ORDER BY id DESC LIMIT $2",
                instance_name, limit,
            )
        return [dict(r) for r in rows]
