"""Unfiltered listings parsed at the cost of what changed since the last one.

A 10,000-instance listing is 9 MB of JSON, and between two passes nearly every item is the same
bytes. The body is split into its items without decoding them (`msgspec`), and an item that is
byte for byte one of the last listing's gets the instance parsed from it then; only new or changed
items are decoded and parsed, by the same parser as ever, so the result is the full parse's, item
for item, anomalies included.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

import reconciler.evolution.v1 as v1
import reconciler.evolution.v2 as v2
from reconciler.evolution.wire import V1, Listing, line_from_items
from reconciler.model import ObservedInstance

_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_ANY = msgspec.json.Decoder()


@dataclass(frozen=True)
class Items:
    """A JSON array's items, each still its bytes."""

    raws: list[msgspec.Raw]

    def line(self) -> str | None:
        """The API line from the items' shape, decoding only as many as that takes."""
        return line_from_items(_ANY.decode(raw) for raw in self.raws)


def split(body: bytes | bytearray) -> Items | Any:
    """A JSON array as its undecoded items; any other body decoded whole (`json` raises for a
    body that is not JSON at all, as for every other answer)."""
    try:
        return Items(_ITEMS.decode(body))
    except msgspec.DecodeError:
        return json.loads(body)


def _parser(line: str) -> Callable[[object, str, str], ObservedInstance]:
    return v1.parse_item if line == V1 else v2.parse_item


class ListingCache:
    """One server's last listing, the SHA-256 of each item's bytes -> the instance parsed from
    them (a digest, not the bytes: the cache would hold a second copy of the listing).

    `settle` turns an instance parsed now into what the caller keeps (the client scrubs the API
    key from anomalies), so a cached instance is exactly what a fresh parse would give it.
    """

    def __init__(self, server: str,
                 settle: Callable[[ObservedInstance], ObservedInstance]) -> None:
        self._server = server
        self._settle = settle
        self._line: str | None = None
        self._known: dict[bytes, ObservedInstance] = {}

    def parse(self, line: str, raws: list[msgspec.Raw]) -> Listing:
        """Raises `ParseError` as the full parse does: at the first item with no readable name."""
        known = self._known if line == self._line else {}
        parse_item = _parser(line)
        seen: dict[bytes, ObservedInstance] = {}
        instances = []
        for index, raw in enumerate(raws):
            digest = hashlib.sha256(raw).digest()
            instance = known.get(digest)
            if instance is None:
                instance = self._settle(parse_item(_ANY.decode(raw), self._server,
                                                   f"item {index}"))
            seen[digest] = instance
            instances.append(instance)
        self._line, self._known = line, seen
        return Listing(tuple(instances))
