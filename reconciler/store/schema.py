"""The daemon's own schema, as ordered migrations, and the deletion trigger of SPEC 4.2.

Every statement is confined to the own schema (`{own}`), except the trigger, which
`install-trigger` adds to the integrations table on purpose. Migrations are append-only: a
released one is never edited, a change is a new version.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from reconciler.model import MAX_INSTANCE_NAME
from reconciler.store.db import Database
from reconciler.store.names import SqlNames

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit log, outbox, observations, tombstones, leases, pass state", """
CREATE TABLE IF NOT EXISTS {own}.audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    server          text NOT NULL,
    instance_name   text NOT NULL,
    organization_id uuid,
    row_id          uuid,
    action          text NOT NULL,
    reason          text NOT NULL,
    guard           text,
    outcome         text NOT NULL,
    error           text,
    event_id        uuid,
    epoch           bigint
);
CREATE INDEX IF NOT EXISTS audit_log_instance_name_idx ON {own}.audit_log (instance_name, id);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON {own}.audit_log (at);

CREATE TABLE IF NOT EXISTS {own}.outbox (
    id            bigserial PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,
    instance_name text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON {own}.outbox (id) WHERE published_at IS NULL;

CREATE TABLE IF NOT EXISTS {own}.observations (
    server               text NOT NULL,
    instance_name        text NOT NULL,
    first_seen           timestamptz NOT NULL,
    orphan_since         timestamptz,
    orphan_streak        integer NOT NULL DEFAULT 0,
    not_connected_since  timestamptz,
    not_connected_reason text,
    last_live            text NOT NULL DEFAULT 'unknown',
    delete_requested_at  timestamptz,
    delete_reason        text,
    delete_attempts      integer NOT NULL DEFAULT 0,
    next_delete_at       timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server, instance_name)
);

CREATE TABLE IF NOT EXISTS {own}.tombstones (
    instance_name   text PRIMARY KEY,
    organization_id uuid,
    deleted_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {own}.leases (
    server      text PRIMARY KEY,
    holder      text NOT NULL,
    epoch       bigint NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS {own}.pass_counts (
    server     text PRIMARY KEY,
    desired    integer NOT NULL,
    observed   integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {own}.missing_streaks (
    instance_name text PRIMARY KEY,
    streak        integer NOT NULL
);

CREATE TABLE IF NOT EXISTS {own}.reported_duplicates (
    group_key   text PRIMARY KEY,
    reported_at timestamptz NOT NULL DEFAULT now()
);
"""),
    Migration(2, "one event id per removal; instance identity", """
ALTER TABLE {own}.observations ADD COLUMN IF NOT EXISTS delete_event_id uuid;
ALTER TABLE {own}.observations ADD COLUMN IF NOT EXISTS instance_id text;
UPDATE {own}.observations SET delete_event_id = gen_random_uuid()
    WHERE delete_requested_at IS NOT NULL AND delete_event_id IS NULL;
"""),
    Migration(3, "replicas and their heartbeats; each server's latest complete snapshot", """
CREATE TABLE IF NOT EXISTS {own}.replicas (
    holder       text PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {own}.snapshots (
    server      text PRIMARY KEY,
    taken_at    timestamptz NOT NULL,
    epoch       bigint NOT NULL,
    api_line    text NOT NULL,
    version     text,
    client_name text,
    instances   jsonb NOT NULL
);
"""),
)

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS {own}.schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION {own}.record_tombstone() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    name text;
BEGIN
    IF OLD.type = 'whatsapp' AND OLD.provider = 'evolution'
       AND jsonb_typeof(OLD.config) = 'object'
       AND jsonb_typeof(OLD.config -> 'instance_name') = 'string' THEN
        name := OLD.config ->> 'instance_name';
        IF btrim(name) <> '' AND length(name) <= {max_name} THEN
            INSERT INTO {own}.tombstones (instance_name, organization_id, deleted_at)
            VALUES (name, OLD.organization_id, now())
            ON CONFLICT (instance_name) DO UPDATE
                SET organization_id = EXCLUDED.organization_id, deleted_at = EXCLUDED.deleted_at;
            PERFORM pg_notify({channel}, name);
        END IF;
    END IF;
    RETURN NULL;
END
$fn$
"""
"""SECURITY DEFINER so that the application's role needs no grant on the daemon's schema."""

TRIGGER = """
DROP TRIGGER IF EXISTS {trigger} ON {table};
CREATE TRIGGER {trigger} AFTER DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {own}.record_tombstone();
"""
"""Drop and create in one transaction rather than CREATE OR REPLACE TRIGGER (PostgreSQL 14+)."""

ROW_HINT_FUNCTION = """
CREATE OR REPLACE FUNCTION {own}.hint_row_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY[
        CASE WHEN jsonb_typeof(NEW.config -> 'instance_name') = 'string'
             THEN NEW.config ->> 'instance_name' END,
        CASE WHEN TG_OP = 'UPDATE' AND jsonb_typeof(OLD.config -> 'instance_name') = 'string'
             THEN OLD.config ->> 'instance_name' END]
    LOOP
        IF name IS NOT NULL AND btrim(name) <> '' AND length(name) <= {max_name} THEN
            PERFORM pg_notify({hint_channel},
                              json_build_object('source', 'row', 'name', name)::text);
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$
"""
"""A hint only (SPEC 4.5): the targeted reconcile reads the row itself. An UPDATE that renames
the instance hints the old name too, which may now be an orphan."""

ROW_HINT_TRIGGER = """
DROP TRIGGER IF EXISTS {row_trigger} ON {table};
CREATE TRIGGER {row_trigger} AFTER INSERT OR UPDATE OF config, enabled, status ON {table}
    FOR EACH ROW EXECUTE FUNCTION {own}.hint_row_change();
"""


def render(template: str, names: SqlNames) -> str:
    """Fill in the validated, quoted names; by replacement, not `str.format`, so SQL braces stay."""
    return (
        template.replace("{own}", names.own)
        .replace("{table}", names.table)
        .replace("{trigger}", f'"{names.trigger_name}"')
        .replace("{channel}", f"'{names.tombstone_channel}'")
        .replace("{hint_channel}", f"'{names.hint_channel}'")
        .replace("{row_trigger}", f'"{names.row_trigger_name}"')
        .replace("{max_name}", str(MAX_INSTANCE_NAME))
    )


async def apply_migrations(db: Database) -> None:
    """Apply the migrations not yet applied, one process at a time (an advisory lock)."""
    names = db.names
    async with db.transaction("migrating the own schema") as conn:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            f"evolution-reconciler:migrate:{names.schema}",
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {names.own}")
        await conn.execute(render(VERSION_TABLE, names))
        applied = {r["version"] for r in await conn.fetch(
            f"SELECT version FROM {names.own}.schema_version")}
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            await conn.execute(render(migration.sql, names))
            await conn.execute(
                f"INSERT INTO {names.own}.schema_version (version, description) VALUES ($1, $2)",
                migration.version, migration.description,
            )
            log.info("schema_migrated", schema=names.schema,
                     version=migration.version, description=migration.description)
