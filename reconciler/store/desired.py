"""The desired-state source: the integrations table the platform owns (SPEC 4.1, 4.2).

The daemon only reads it, except for the guarded status writes of `DecisionTables` and the
deletion trigger an operator installs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import structlog

from reconciler.model import DesiredInstance, DesiredState
from reconciler.names import instance_key
from reconciler.store.cache import RowCache
from reconciler.store.db import Database
from reconciler.store.errors import IntegrationsTableMissing
from reconciler.store.rows import (
    DESIRED_COLUMNS,
    DESIRED_TEXT_COLUMNS,
    InvalidRow,
    LeaseToken,
    desired_from_row,
    desired_from_text,
)
from reconciler.store.schema import (
    ROW_HINT_FUNCTION,
    ROW_HINT_TRIGGER,
    TRIGGER,
    TRIGGER_FUNCTION,
    apply_migrations,
    render,
)

if TYPE_CHECKING:
    from reconciler.store.db import Conn

log = structlog.get_logger(__name__)

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


class DesiredTable:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._names = db.names
        self._parsed: RowCache[asyncpg.Record, DesiredInstance | InvalidRow] = RowCache(
            desired_from_text)
        """The last read's rows, decided: an unchanged row costs a lookup, not a JSON decode."""

    async def read(self) -> DesiredState:
        async with self._db.snapshot("reading desired state", table=True) as conn:
            rows = await conn.fetch(
                f"SELECT {DESIRED_TEXT_COLUMNS} FROM {self._names.table}"
                " WHERE type = 'whatsapp' AND provider = 'evolution' ORDER BY id"
            )
        instances: list[DesiredInstance] = []
        invalid = 0
        claimed: set[str] = set()
        for parsed in self._parsed.decoded(rows):
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
        even a disabled one, or a row that could not be read claiming it, decided as `read`
        decides.

        The SQL only narrows the rows down, with a superset of what may name or claim the key:
        the key is a substring of every spelling of it, and the text of a jsonb holds each string
        verbatim unless JSON escapes a character of it, and then it holds a backslash. A table
        scan, for the few deletes of a pass.

        With `lease`, the decision to delete is fenced too: LeaseLost if it is no longer current.
        """
        leases = [lease] if lease else []
        async with self._db.transaction("re-checking the desired row", leases,
                                        table=True) as conn:
            named, claimed = await self._naming(conn, instance_name)
        return bool(named or claimed)

    async def read_naming(self, instance_name: str) -> DesiredState:
        """A hint's point read (SPEC 4.5): the rows naming the instance by the one name rule,
        and whether a row that could not be read claims it."""
        async with self._db.snapshot("reading the rows of one instance", table=True) as conn:
            named, claimed = await self._naming(conn, instance_name)
        return DesiredState(tuple(named), invalid_rows=0,
                            claimed=frozenset({instance_key(instance_name)} if claimed else ()))

    async def _naming(self, conn: Conn, instance_name: str) -> tuple[list[DesiredInstance], bool]:
        key = instance_key(instance_name)
        rows = await conn.fetch(
            f"SELECT {DESIRED_COLUMNS} FROM {self._names.table}"
            " WHERE type = 'whatsapp' AND provider = 'evolution'"
            " AND (strpos(config::text, $1) > 0 OR strpos(config::text, chr(92)) > 0)"
            " ORDER BY id",
            key,
        )
        named: list[DesiredInstance] = []
        claimed = False
        for row in rows:
            parsed = desired_from_row(row)
            if isinstance(parsed, InvalidRow):
                claimed = claimed or key in parsed.claims
            elif instance_key(parsed.instance_name) == key:
                named.append(parsed)
        return named, claimed

    async def check_table(self) -> None:
        """IntegrationsTableMissing unless the table exists with every column the daemon uses."""
        table = self._names.table_display
        async with self._db.snapshot("checking the integrations table") as conn:
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
        """Add the deletion trigger of SPEC 4.2 and the row hints of 4.5 (and the own schema they
        write to); run again, it upgrades both in place."""
        await apply_migrations(self._db)
        async with self._db.transaction("installing the deletion trigger", table=True) as conn:
            await conn.execute(render(TRIGGER_FUNCTION, self._names))
            await conn.execute(render(TRIGGER, self._names))
            await conn.execute(render(ROW_HINT_FUNCTION, self._names))
            await conn.execute(render(ROW_HINT_TRIGGER, self._names))
        log.info("trigger_installed", table=self._names.table_display,
                 channel=self._names.tombstone_channel)
