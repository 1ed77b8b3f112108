"""What both API lines share on the wire: states, JIDs, times, versions, and telling v1 from v2.

Pure functions only: the parsers (v1.py, v2.py) and the client build on these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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
_STATE_NAMES = "open, connecting or close"
_SHOWN = 40
"""How much of an odd value an anomaly quotes: enough to recognise it, never a whole blob."""
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


class ParseError(ValueError):
    """A body that is not what the API line promises: nothing may be decided from it."""


@dataclass(frozen=True)
class Listing:
    """A parsed `fetchInstances` answer; items with an odd field carry an `anomaly`."""

    instances: tuple[ObservedInstance, ...]


class ItemReader:
    """Reads the fields of one listed item whose name was readable (SPEC 3).

    An odd field reads as absent and is noted, so that one foreign or broken item is decided on
    its own (conservatively, by the planner) instead of making the whole listing unusable.
    """

    def __init__(self, item: Mapping[str, Any]) -> None:
        self._item = item
        self._odd: dict[str, str] = {}

    def note(self, key: str, why: str) -> None:
        shown = repr(self._item[key]) if key in self._item else ""
        if len(shown) > _SHOWN:
            shown = shown[: _SHOWN - 3] + "..."
        self._odd[key] = f"{key} {shown} {why}" if shown else f"{key} {why}"

    def is_odd(self, *keys: str) -> bool:
        return any(key in self._odd for key in keys)

    @property
    def anomaly(self) -> str | None:
        return "; ".join(self._odd.values()) or None

    def get(self, key: str, kind: type) -> Any:
        """The value if it is absent, null or of `kind` (a boolean is never an int here)."""
        value = self._item.get(key)
        if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
            return value
        self.note(key, f"is {type(value).__name__}, not {kind.__name__}")
        return None

    def state(self, key: str) -> str | None:
        """A stored status: one of Evolution's three states, or odd (missing included)."""
        value = self._item.get(key)
        if isinstance(value, str) and value in _STATES:
            return value
        self.note(key, "is missing" if key not in self._item else "is not " + _STATE_NAMES)
        return None

    def time(self, key: str) -> datetime | None:
        value = self._item.get(key)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            self.note(key, "is not an ISO-8601 timestamp")
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def disconnect_object(self, key: str) -> dict[str, Any] | None:
        try:
            return parse_disconnect_object(self._item.get(key))
        except ValueError as exc:
            self.note(key, f"is unreadable ({exc})")
            return None


def path_segment(name: str) -> str:
    """A name as one URL path segment, for every path that names an instance (SPEC 3).

    `/`, `?`, `#` and `%` are percent-encoded; the dot segments `.` and `..` too, or the HTTP
    client normalises them away (`/instance/delete/..` would become `/instance`).
    """
    segment = quote(name, safe="")
    return "%2E" * len(segment) if segment in (".", "..") else segment


def instance_path(route: str, name: str) -> str:
    """The path of a route that acts on one instance (`/instance/delete/<name>`)."""
    return f"/instance/{route}/{path_segment(name)}"


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
    return line_from_items(body if isinstance(body, list) else [body])


def line_from_items(items: Iterable[object]) -> str | None:
    """v1 items wrap everything in `instance`; v2 items are flat rows with `name`."""
    for item in items:
        if isinstance(item, dict):
            if isinstance(item.get("instance"), dict):
                return V1
            if "name" in item and "connectionStatus" in item:
                return V2
    return None


def recorded_disconnect(
    stored_status: str | None, code: int | None, obj: dict[str, Any] | None
) -> Disconnect | None:
    """The disconnect a listing records: Evolution never clears the disconnect fields, so they
    count only while the stored status is `close`."""
    if stored_status != LiveState.CLOSE.value:
        return None
    return classify(code, obj)
