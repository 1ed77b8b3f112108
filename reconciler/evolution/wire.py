"""What both API lines share on the wire: states, JIDs, times, versions, and telling v1 from v2.

Pure functions only: the parsers (v1.py, v2.py) and the client build on these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from reconciler.model import Disconnect, LiveState, ObservedInstance
from reconciler.reasons import classify, parse_disconnect_object

V1 = "v1"
V2 = "v2"
API_LINES = (V1, V2)

_STATES = {s.value: s for s in (LiveState.OPEN, LiveState.CONNECTING, LiveState.CLOSE)}
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


class ParseError(ValueError):
    """A body that is not what the API line promises: nothing may be decided from it."""


@dataclass(frozen=True)
class Listing:
    """A parsed `fetchInstances` answer, and the problems worth a log line that did not stop it."""

    instances: tuple[ObservedInstance, ...]
    warnings: tuple[str, ...] = ()


def path_segment(name: str) -> str:
    """A name as one URL path segment, for every path that names an instance (SPEC 3).

    `/`, `?`, `#` and `%` are percent-encoded; the dot segments `.` and `..` too, or the HTTP
    client normalises them away (`/instance/delete/..` would become `/instance`).
    """
    segment = quote(name, safe="")
    return "%2E" * len(segment) if segment in (".", "..") else segment


def live_state(value: object) -> LiveState:
    """An in-memory state as Evolution reports it; anything else (absent: not loaded) is UNKNOWN."""
    return _STATES.get(value, LiveState.UNKNOWN) if isinstance(value, str) else LiveState.UNKNOWN


def normalise_number(jid: str | None) -> str | None:
    """The WhatsApp number of an owner JID: `5511...:12@s.whatsapp.net` -> `5511...`."""
    if not jid:
        return None
    user = jid.split("@", 1)[0].split(":", 1)[0]
    digits = "".join(c for c in user if "0" <= c <= "9")
    return digits or None


def parse_time(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{what} is {type(value).__name__}, not a timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ParseError(f"{what} is not an ISO-8601 timestamp") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def version_tuple(version: str | None) -> tuple[int, int, int] | None:
    """`"2.4.0-rc2"` -> (2, 4, 0); None when the server did not say or said something else."""
    match = _VERSION.match(version or "")
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def line_from_root(root: Mapping[str, Any]) -> str | None:
    """v1 from `GET /`'s version (1.x) or its `swagger` key; v2 from 2.x or its `clientName`."""
    parsed = version_tuple(root.get("version") if isinstance(root.get("version"), str) else None)
    if parsed is not None:
        return V1 if parsed[0] < 2 else V2
    if "clientName" in root:
        return V2
    if "swagger" in root:
        return V1
    return None


def line_from_listing(body: object) -> str | None:
    """v1 items wrap everything in `instance`; v2 items are flat rows with `name`."""
    items = body if isinstance(body, list) else [body]
    for item in items:
        if isinstance(item, dict):
            if isinstance(item.get("instance"), dict):
                return V1
            if "name" in item and "connectionStatus" in item:
                return V2
    return None


def recorded_disconnect(
    stored_status: str | None, code: int | None, raw_object: object, *, name: str
) -> tuple[Disconnect | None, str | None]:
    """The disconnect a listing records, and a warning when its object cannot be decoded.

    Evolution never clears the disconnect fields, so they count only while the stored status is
    `close`; a broken `disconnectionObject` is classified by its code alone.
    """
    if stored_status != LiveState.CLOSE.value:
        return None, None
    try:
        obj = parse_disconnect_object(raw_object)
    except ValueError as exc:
        return classify(code), f"instance {name!r}: disconnectionObject is unreadable ({exc})"
    return classify(code, obj), None
