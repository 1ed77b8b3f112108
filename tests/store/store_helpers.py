"""Helpers shared by the store tests (a module of its own: test directories are not packages)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class App:
    """The platform's side of the integrations table."""

    conn: asyncpg.Connection[asyncpg.Record]
    table: str

    async def insert(
        self,
        *,
        instance_name: str | None = None,
        config: object = None,
        type: str = "whatsapp",
        provider: str = "evolution",
        enabled: bool = True,
        status: str = "connected",
        disconnect_reason: str | None = None,
        organization_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        if config is None:
            config = {"instance_name": instance_name, "token": "t"}
        row_id: uuid.UUID = await self.conn.fetchval(
            f"INSERT INTO {self.table} (organization_id, type, provider, enabled, status,"
            " disconnect_reason, config, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, now() - interval '1 day') RETURNING id",
            organization_id or uuid.uuid4(), type, provider, enabled, status, disconnect_reason,
            json.dumps(config),
        )
        return row_id

    async def row(self, row_id: uuid.UUID) -> dict[str, object]:
        record = await self.conn.fetchrow(f"SELECT * FROM {self.table} WHERE id = $1", row_id)
        assert record is not None
        return dict(record)
