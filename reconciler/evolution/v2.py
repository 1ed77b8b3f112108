"""Evolution API v2 (2.2 to 2.4): `fetchInstances` answers raw Prisma `Instance` rows.

The row's `connectionStatus` is the database column, which lags the session (it stays `open`
through reconnects): the live state comes from elsewhere (`/metrics`, `connectionState`).
"""

from __future__ import annotations

from reconciler.evolution.wire import (
    ItemReader,
    Listing,
    ParseError,
    normalise_number,
    recorded_disconnect,
)
from reconciler.model import LiveState, ObservedInstance


def parse_item(item: object, server: str, where: str = "item") -> ObservedInstance:
    """One row as the domain type. Only an unreadable name is fatal: any other odd field reads
    as absent and is named in `anomaly` (an unreadable disconnect record gives no reason)."""
    if not isinstance(item, dict):
        raise ParseError(f"{where} is {type(item).__name__}, not an object")
    name = item.get("name")
    if not isinstance(name, str):
        raise ParseError(f"{where}: name is missing or not a string")
    read = ItemReader(item)
    stored = read.state("connectionStatus")
    owner = read.get("ownerJid", str)
    code = read.get("disconnectionReasonCode", int)
    obj = read.disconnect_object("disconnectionObject")
    if read.is_odd("disconnectionReasonCode", "disconnectionObject"):
        code, obj = None, None
    return ObservedInstance(
        server=server,
        name=name,
        stored_status=stored,
        live=LiveState.UNKNOWN,
        owner_jid=owner,
        number=normalise_number(owner),
        created_at=read.time("createdAt"),
        disconnect=recorded_disconnect(stored, code, obj),
        instance_id=read.get("id", str),
        client_name=read.get("clientName", str),
        anomaly=read.anomaly,
    )


def parse_listing(body: object, server: str) -> Listing:
    """An unfiltered listing: always an array in v2; anything else is not a listing."""
    if not isinstance(body, list):
        raise ParseError(f"fetchInstances answered {type(body).__name__}, not a list")
    return Listing(tuple(parse_item(item, server, f"item {i}") for i, item in enumerate(body)))


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
