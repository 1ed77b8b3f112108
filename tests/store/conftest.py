"""A migrated Store per test, and a plain connection playing the application that owns the rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from store_helpers import App

from reconciler.store import Store


@pytest.fixture
async def store(database_url: str, db_names: Any) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, integrations_table=db_names.integrations_table,
                            schema=db_names.schema)
    try:
        await s.migrate()
        yield s
    finally:
        await s.close()


@pytest.fixture
async def app(database_url: str, db_names: Any) -> AsyncIterator[App]:
    conn = await asyncpg.connect(database_url)
    try:
        yield App(conn, db_names.integrations_table)
    finally:
        await conn.close()
