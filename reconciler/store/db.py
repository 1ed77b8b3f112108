"""The plumbing every role of the store shares: one pool, transactions, fencing, error kinds.

Each write that acts on a decision is one transaction that first checks, under a row lock, that the
writer's lease is still current (SPEC 7): a replica that lost its lease writes nothing more.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from reconciler.redaction import redact, url_passwords
from reconciler.store.errors import IntegrationsTableMissing, LeaseLost, StoreError
from reconciler.store.names import SqlNames
from reconciler.store.rows import LeaseToken

DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""Everything the driver raises for database trouble (InternalClientError: "another operation
is in progress" on a connection a cancelled call left busy) is a StoreError, never a bug."""
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, ValueError)
"""A malformed DSN is a ValueError, whose message may quote the DSN: redacted like the rest."""
_TABLE_ERRORS = (
    asyncpg.UndefinedTableError,
    asyncpg.InvalidSchemaNameError,
    asyncpg.UndefinedColumnError,
)

if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Conn: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def rows_affected(status: str) -> int:
    """Rows affected, from a command tag such as `UPDATE 1`."""
    return int(status.rsplit(" ", 1)[-1])


class Database:
    """The one connection pool to the database holding the integrations table and own schema."""

    def __init__(self, pool: Pool, dsn: str, names: SqlNames) -> None:
        self._pool = pool
        self.dsn = dsn
        """For a connection of its own (the NOTIFY listener outlives any pooled one)."""
        self.names = names
        self._secrets = url_passwords(dsn)

    @classmethod
    async def connect(cls, dsn: str, names: SqlNames) -> Database:
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
            raise StoreError(redact(f"connecting to the database: {_describe(exc)}",
                                     url_passwords(dsn))) from None
        return cls(pool, dsn, names)

    async def close(self) -> None:
        await self._pool.close()

    @contextmanager
    def failures(self, doing: str, *, table: bool = False) -> Iterator[None]:
        """Turn driver errors into StoreError; with `table`, a missing relation is the table's."""
        try:
            yield
        except DB_ERRORS as exc:
            if table and isinstance(exc, _TABLE_ERRORS):
                raise IntegrationsTableMissing(
                    f"integrations table {self.names.table_display} is missing or incomplete"
                    f" ({_describe(exc)})"
                ) from exc
            raise StoreError(redact(f"{doing}: {_describe(exc)}", self._secrets)) from exc

    @asynccontextmanager
    async def transaction(
        self, doing: str, leases: Iterable[LeaseToken] = (), *, table: bool = False
    ) -> AsyncIterator[Conn]:
        """A transaction that holds every lease of `leases` until it commits (see `_fence`)."""
        with self.failures(doing, table=table):
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, leases)
                yield conn

    @asynccontextmanager
    async def snapshot(self, doing: str, *, table: bool = False) -> AsyncIterator[Conn]:
        """A read-only transaction seeing one consistent state of every table it reads."""
        with self.failures(doing, table=table):
            async with self._pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True
            ):
                yield conn

    async def check(self, doing: str, leases: Iterable[LeaseToken]) -> None:
        """Whether the leases are current now, right before a call to Evolution: the fence's
        test without its lock, which a transaction that writes nothing would release at once
        (and pay a commit for)."""
        with self.failures(doing):
            async with self._pool.acquire() as conn:
                await self._fence(conn, leases, hold=False)

    async def _fence(self, conn: Conn, leases: Iterable[LeaseToken], *, hold: bool = True) -> None:
        """Hold each lease row (FOR SHARE) until commit, so a takeover waits for this write."""
        for token in sorted(leases, key=lambda t: t.server):
            held = await conn.fetchval(
                f"SELECT true FROM {self.names.own}.leases"
                " WHERE server = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()"
                + (" FOR SHARE" if hold else ""),
                token.server, token.holder, token.epoch,
            )
            if not held:
                raise LeaseLost(
                    f"lease of server {token.server!r} (holder {token.holder!r}, "
                    f"epoch {token.epoch}) is no longer current"
                )
