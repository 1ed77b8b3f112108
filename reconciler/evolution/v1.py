"""Evolution API v1 (1.7, 1.8): `fetchInstances` answers `{"instance": {...}}` wrappers.

v1 keeps everything in memory, so the listing's `status` is the live state itself: no probes are
needed. It records no disconnect reason and no creation time.
"""

from __future__ import annotations

from reconciler.evolution.wire import (
    ItemReader,
    Listing,
    ParseError,
    live_state,
    normalise_number,
    recorded_disconnect,
)
from reconciler.model import ObservedInstance


def _inner(item: object, where: str) -> dict[str, object]:
    inner = item.get("instance") if isinstance(item, dict) else None
    if not isinstance(inner, dict):
        raise ParseError(f"{where} has no instance object")
    if not isinstance(inner.get("instanceName"), str):
        raise ParseError(f"{where}: instanceName is missing or not a string")
    return inner


def parse_item(item: object, server: str, where: str = "item") -> ObservedInstance:
    """One wrapper as the domain type. Only an unreadable name is fatal: any other odd field
    reads as absent and is named in `anomaly` (an unknown status is no live state at all)."""
    inner = _inner(item, where)
    name = str(inner["instanceName"])
    read = ItemReader(inner)
    status = read.state("status")
    owner = read.get("owner", str)
    return ObservedInstance(
        server=server,
        name=name,
        stored_status=status,
        live=live_state(status),
        owner_jid=owner,
        number=normalise_number(owner),
        created_at=None,
        disconnect=recorded_disconnect(status, None, None),
        instance_id=read.get("instanceId", str),
        client_name=None,
        anomaly=read.anomaly,
    )


def _items(body: object, filtered: bool) -> list[object]:
    if isinstance(body, dict) and "instance" in body:
        if not filtered:
            raise ParseError("v1 answered a single object to an unfiltered listing")
        return [body]
    if not isinstance(body, list):
        raise ParseError(f"fetchInstances answered {type(body).__name__}, not a list")
    return body


def parse_listing(body: object, server: str, *, filtered: bool = False) -> Listing:
    """A listing; `filtered` (by name, with the global key) answers a single object, not a list."""
    items = _items(body, filtered)
    return Listing(tuple(parse_item(item, server, f"item {i}") for i, item in enumerate(items)))


def names(body: object) -> list[str]:
    return [str(_inner(item, f"item {i}")["instanceName"])
            for i, item in enumerate(_items(body, filtered=False))]
