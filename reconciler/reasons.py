"""Disconnect codes to the stable reasons of SPEC 4.4.

Evolution records a code (`disconnectionReasonCode`) and the Baileys error that caused it
(`disconnectionObject`, a JSON string). The reason decides whether the daemon marks a disconnect at
once (terminal: only a human with a phone can fix it) or waits for it to persist (transient:
Evolution is already reconnecting).
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.model import Disconnect

INSTANCE_MISSING = "instance_missing"
CONNECTION_CLOSED = "connection_closed"

_BY_CODE: dict[int, tuple[str, bool]] = {
    401: ("logged_out", True),
    402: ("temporarily_banned", True),
    403: ("forbidden", True),
    406: ("banned", True),
    408: ("connection_lost", False),
    428: (CONNECTION_CLOSED, False),
    440: ("connection_replaced", False),
    500: ("bad_session", False),
    515: ("restart_required", False),
}

def parse_disconnect_object(raw: object) -> dict[str, Any] | None:
    """Decode `disconnectionObject`: a JSON string in v2, sometimes already an object.

    Raises ValueError for a string that is not a JSON object, so the caller can report it.
    """
    if raw is None:
        return None
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        decoded = json.loads(raw)
        if isinstance(decoded, dict):
            return decoded
        raise ValueError("disconnectionObject is not a JSON object")
    raise ValueError(f"disconnectionObject has type {type(raw).__name__}")


def _is_device_removed(obj: dict[str, Any] | None) -> bool:
    if not obj:
        return False
    error = obj.get("error")
    data = error.get("data") if isinstance(error, dict) else None
    content = data.get("content") if isinstance(data, dict) else None
    if not isinstance(content, list):
        return False
    return any(
        isinstance(node, dict)
        and node.get("tag") == "conflict"
        and isinstance(node.get("attrs"), dict)
        and node["attrs"].get("type") == "device_removed"
        for node in content
    )


def classify(code: int | None, obj: dict[str, Any] | None = None) -> Disconnect:
    """The reason for a recorded close; `code=None` means closed with nothing recorded."""
    if code is None:
        return Disconnect(reason=CONNECTION_CLOSED, terminal=False, code=None)
    if code == 401 and _is_device_removed(obj):
        return Disconnect(reason="device_removed", terminal=True, code=code)
    reason, terminal = _BY_CODE.get(code, (f"unknown_{code}", False))
    return Disconnect(reason=reason, terminal=terminal, code=code)
