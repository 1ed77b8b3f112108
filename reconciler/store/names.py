"""SQL names that come from settings: validated, then quoted, never interpolated unchecked."""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_IDENTIFIER = 63
"""PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated, so they are refused."""


def check_identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.fullmatch(value) or len(value) > _MAX_IDENTIFIER:
        raise ValueError(
            f"{what} {value!r} is not a SQL identifier (letters, digits, underscores, "
            f"not starting with a digit, at most {_MAX_IDENTIFIER} characters)"
        )
    return value


def quote(identifier: str) -> str:
    """Quote an identifier already checked by `check_identifier` (it holds no quote)."""
    return f'"{identifier}"'


@dataclass(frozen=True)
class SqlNames:
    """The quoted names every query of the store is built from."""

    schema: str
    """The daemon's own schema, unquoted."""
    table_schema: str
    table_name: str

    @classmethod
    def parse(cls, integrations_table: str, schema: str) -> SqlNames:
        parts = integrations_table.split(".")
        if len(parts) != 2:
            raise ValueError(
                f"integrations table {integrations_table!r} must be schema-qualified "
                "(schema.table)"
            )
        table_schema, table_name = (
            check_identifier(p, "integrations table part") for p in parts
        )
        return cls(check_identifier(schema, "schema"), table_schema, table_name)

    @property
    def own(self) -> str:
        return quote(self.schema)

    @property
    def table(self) -> str:
        return f"{quote(self.table_schema)}.{quote(self.table_name)}"

    @property
    def table_display(self) -> str:
        return f"{self.table_schema}.{self.table_name}"

    @property
    def tombstone_channel(self) -> str:
        """The NOTIFY channel of the deletion trigger (an identifier, so at most 63 bytes)."""
        return f"{self.schema}_tombstones"[:_MAX_IDENTIFIER]

    @property
    def hint_channel(self) -> str:
        """The NOTIFY channel of row hints and of hints passed to a server's leader (JSON)."""
        return f"{self.schema}_hints"[:_MAX_IDENTIFIER]

    @property
    def row_trigger_name(self) -> str:
        return f"{self.schema}_row_hint"[:_MAX_IDENTIFIER]

    @property
    def trigger_name(self) -> str:
        return f"{self.schema}_tombstone"[:_MAX_IDENTIFIER]
