"""The own schema: created idempotently, concurrently, and only inside itself."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from reconciler.store import IntegrationsTableMissing, Store, StoreError
from reconciler.store.schema import MIGRATIONS

OWN_TABLES = {"audit_log", "outbox", "observations", "tombstones", "leases", "pass_counts",
              "missing_streaks", "reported_duplicates", "schema_version", "replicas", "snapshots"}


async def _objects(conn: asyncpg.Connection[Any], schema: str) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT c.relname, c.relkind::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1", schema)
    procs = await conn.fetch(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = $1", schema)
    triggers = await conn.fetch(
        "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1", schema)
    return ({(r[0], r[1]) for r in rows} | {(r[0], "function") for r in procs}
            | {(r[0], "trigger") for r in triggers})


async def test_migrate_twice_and_concurrently_touches_only_its_schema(
    database_url: str, db_names: Any
) -> None:
    app_schema = db_names.integrations_table.split(".")[0]
    conn = await asyncpg.connect(database_url)
    stores = [await Store.connect(database_url, integrations_table=db_names.integrations_table,
                                  schema=db_names.schema) for _ in range(2)]
    try:
        before = {s: await _objects(conn, s) for s in (app_schema, "public")}
        await asyncio.gather(*(s.migrate() for s in stores))
        await stores[0].migrate()
        await stores[1].migrate()
        assert {s: await _objects(conn, s) for s in (app_schema, "public")} == before
        tables = {name for name, kind in await _objects(conn, db_names.schema) if kind == "r"}
        assert tables == OWN_TABLES
        versions = await conn.fetch(
            f'SELECT version FROM "{db_names.schema}".schema_version ORDER BY version')
        assert [r[0] for r in versions] == [m.version for m in MIGRATIONS]
    finally:
        for s in stores:
            await s.close()
        await conn.close()


async def test_first_migration_races_on_a_fresh_database(database_url: str,
                                                         db_names: Any) -> None:
    """Two processes starting at once on a database without the schema both succeed."""
    stores = [await Store.connect(database_url, integrations_table=db_names.integrations_table,
                                  schema=db_names.schema) for _ in range(3)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        assert await stores[2].outbox.count_pending() == 0
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize(("table", "schema"), [
    ("integrations", "reconciler"),
    ('healthcare.integrations"; DROP TABLE x; --', "reconciler"),
    ("a.b.c", "reconciler"),
    ("healthcare.integrations", "bad-schema"),
    ("healthcare.integrations", "1st"),
    ("healthcare.integrations", "x" * 64),
    ("healthcare.integrations", "reconciler\n"),
])
async def test_unsafe_names_are_refused_before_connecting(table: str, schema: str) -> None:
    with pytest.raises(ValueError, match=r"identifier|schema-qualified"):
        await Store.connect("postgresql://nobody@127.0.0.1:1/none",
                            integrations_table=table, schema=schema)


async def test_check_integrations_table(database_url: str, db_names: Any) -> None:
    good = await Store.connect(database_url, integrations_table=db_names.integrations_table,
                               schema=db_names.schema)
    absent = await Store.connect(database_url, integrations_table="no_such_schema.integrations",
                                 schema=db_names.schema)
    try:
        await good.desired.check_table()
        with pytest.raises(IntegrationsTableMissing, match=r"no_such_schema\.integrations"):
            await absent.desired.check_table()
        with pytest.raises(IntegrationsTableMissing):
            await absent.desired.read()
    finally:
        await good.close()
        await absent.close()


async def test_incomplete_integrations_table_is_refused(database_url: str,
                                                        db_names: Any) -> None:
    app_schema = db_names.integrations_table.split(".")[0]
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'CREATE TABLE "{app_schema}".partial (id uuid, config json)')
    store = await Store.connect(database_url, integrations_table=f"{app_schema}.partial",
                                schema=db_names.schema)
    try:
        with pytest.raises(IntegrationsTableMissing, match="lacks columns: disconnect_reason"):
            await store.desired.check_table()
    finally:
        await store.close()
        await conn.close()


async def test_unreachable_database_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        await Store.connect("postgresql://app:s3cr3t-pw@127.0.0.1:1/db",
                            integrations_table="healthcare.integrations", schema="reconciler")
    assert "s3cr3t-pw" not in str(caught.value)
    assert "connecting to the database" in str(caught.value)


@pytest.mark.parametrize("failure", [
    asyncpg.InternalClientError("cannot perform operation: another operation is in progress"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
])
async def test_every_driver_failure_is_a_store_error(store: Store, failure: Exception) -> None:
    """Database trouble, never "a pass failed unexpectedly": the pass still publishes."""
    with pytest.raises(StoreError, match="operation"), store._db.failures("reading the outbox"):
        raise failure
