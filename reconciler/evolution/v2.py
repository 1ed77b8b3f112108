"""Evolution API v2 (2.2 to 2.4): `fetchInstances` answers raw Prisma `Instance` rows.

The row's `connectionStatus` is the database column, which lags the session (it stays `open`
through reconnects): the live state comes from elsewhere (`/metrics`, `connectionState`).
"""

from __future__ import annotations

from typing import Any

from reconciler.evolution.wire import (
    Listing,
    ParseError,
    normalise_number,
    parse_time,
    recorded_disconnect,
)
from reconciler.model import LiveState, ObservedInstance


def _field(item: dict[str, Any], key: str, kinds: tuple[type, ...], where: str) -> Any:
    value = item.get(key)
    if value is None and type(None) in kinds:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise ParseError(f"{where}: {key} is a boolean")
    if not isinstance(value, kinds):
        raise ParseError(f"{where}: {key} is {type(value).__name__}")
    return value


_OPTIONAL_STR = (str, type(None))


def parse_item(
    item: object, server: str, where: str = "item"
) -> tuple[ObservedInstance, str | None]:
    """One row as the domain type, and a warning if its disconnect object could not be read."""
    if not isinstance(item, dict):
        raise ParseError(f"{where} is {type(item).__name__}, not an object")
    name = _field(item, "name", (str,), where)
    stored = _field(item, "connectionStatus", (str,), where)
    owner = _field(item, "ownerJid", _OPTIONAL_STR, where)
    code = _field(item, "disconnectionReasonCode", (int, type(None)), where)
    if "disconnectionObject" in item:
        _field(item, "disconnectionObject", (str, dict, type(None)), where)
    disconnect, warning = recorded_disconnect(
        stored, code, item.get("disconnectionObject"), name=name
    )
    observed = ObservedInstance(
        server=server,
        name=name,
        stored_status=stored,
        live=LiveState.UNKNOWN,
        owner_jid=owner,
        number=normalise_number(owner),
        created_at=parse_time(item.get("createdAt"), f"{where}: createdAt"),
        disconnect=disconnect,
        instance_id=_field(item, "id", _OPTIONAL_STR, where),
        client_name=_field(item, "clientName", _OPTIONAL_STR, where),
    )
    return observed, warning


def parse_listing(body: object, server: str) -> Listing:
    """An unfiltered listing: always an array in v2; anything else is not a listing."""
    if not isinstance(body, list):
        raise ParseError(f"fetchInstances answered {type(body).__name__}, not a list")
    instances = []
    warnings = []
    for index, item in enumerate(body):
        observed, warning = parse_item(item, server, f"item {index}")
        instances.append(observed)
        if warning:
            warnings.append(warning)
    return Listing(tuple(instances), tuple(warnings))


def names(body: object) -> list[str]:
    """Names only, for verifying a deletion: cheaper than a full parse, as strict about shape."""
    if not isinstance(body, list):
        raise ParseError(f"fetchInstances answered {type(body).__name__}, not a list")
    result = []
    for index, item in enumerate(body):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ParseError(f"item {index} has no name")
        result.append(item["name"])
    return result
