"""Failures of calls to Evolution API, with messages that are safe to log and show.

Evolution's error bodies come in several shapes (CONTRACT.md section 4): the usual envelope
`{"status", "error", "response": {"message": ...}}` whose `message` is a string, a list of
strings or a list of lists; a bare `{"error": true, "message": ...}` (v1.8 branch head,
`connect`, `restart`); and 2.4.0's licence gate. `envelope_message` flattens them all into one line.
"""

from __future__ import annotations

import json

MESSAGE_LIMIT = 300
"""Error bodies can be huge (Prisma dumps); a log line needs only their start."""


class EvolutionError(Exception):
    """A call to an Evolution server did not do what was asked; callers catch the kinds below
    by type (as with httpx). `message` never contains the API key; `status` is the HTTP status,
    if an answer came at all. Raised as itself when neither a person nor a retry is known to help
    (an unparseable listing, a 500 to a write)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class OperatorError(EvolutionError):
    """Retrying cannot help: a person must fix something (wrong API key, wrong URL or route,
    unlicensed server)."""


class TransientError(EvolutionError):
    """The same call may succeed later (timeout, connection trouble, 5xx, 429)."""


class NeedsLogout(EvolutionError):
    """The server refuses to delete a connected instance (v1 up to 1.8.3, 2.2.0): log it out
    first."""


def _flatten(message: object) -> str:
    if isinstance(message, str):
        return message
    if isinstance(message, list):
        return "; ".join(_flatten(part) for part in message)
    return json.dumps(message, separators=(",", ":"), default=str)


def envelope_message(body: object) -> str | None:
    """The human message of an Evolution error body, whatever its shape; None if it has none."""
    if not isinstance(body, dict):
        return None
    if body.get("code") == "LICENSE_REQUIRED":
        return f"LICENSE_REQUIRED: {_flatten(body.get('error', 'service not activated'))}"
    response = body.get("response")
    if isinstance(response, dict) and "message" in response:
        return _flatten(response["message"])
    if "message" in body:
        return _flatten(body["message"])
    return None


def is_license_required(body: object) -> bool:
    """2.4.0's gate: every business route answers 503 until the server's licence is activated."""
    return isinstance(body, dict) and body.get("code") == "LICENSE_REQUIRED"


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
