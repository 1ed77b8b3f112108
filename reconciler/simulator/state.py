"""The simulated server's state: its instances, its settings and the quirks of its version.

Everything a route reads or changes lives here, behind one lock (the simulator serves from its
own thread while tests, the demo and the soak change its state directly).
"""

from __future__ import annotations

import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.evolution.wire import version_tuple
from reconciler.simulator.webhooks import WebhookSender

VERSIONS = ("1.8.2", "1.8.7", "2.2.0", "2.3.6", "2.3.7", "2.4.0-rc2")
INTEGRATIONS = ("WHATSAPP-BAILEYS", "WHATSAPP-BUSINESS", "EVOLUTION")
STATES = ("open", "connecting", "close")

TERMINAL_CODES = frozenset({401, 402, 403, 406})
"""Closes Evolution does not reconnect from (v2); they send the close webhooks."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_token() -> str:
    return str(uuid.uuid4()).upper()


def _new_id() -> str:
    return str(uuid.uuid4())


def _cuid() -> str:
    """Prisma's default id for `Setting` rows: a `c` and 24 lowercase letters and digits."""
    return "c" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(24))


def iso(moment: datetime | None) -> str | None:
    """JavaScript's `toISOString()`: UTC, milliseconds, `Z`."""
    if moment is None:
        return None
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def api_logout_object(name: str, at: datetime) -> dict[str, Any]:
    """What Evolution stores in `disconnectionObject` when an instance is logged out by the API."""
    message = f"Log out instance: {name}"
    return {"error": {"data": None, "isBoom": True, "isServer": False,
                      "output": {"statusCode": 401,
                                 "payload": {"statusCode": 401, "error": "Unauthorized",
                                             "message": message},
                                 "headers": {}}},
            "date": iso(at)}


def device_removed_object(at: datetime) -> dict[str, Any]:
    """What Evolution stores when the phone removed the linked device (401 `device_removed`)."""
    return {"error": {"data": {"tag": "stream:error", "attrs": {"code": "401"},
                               "content": [{"tag": "conflict",
                                            "attrs": {"type": "device_removed"}}]},
                      "isBoom": True, "isServer": False,
                      "output": {"statusCode": 401,
                                 "payload": {"statusCode": 401, "error": "Unauthorized",
                                             "message": "Stream Errored (conflict)"},
                                 "headers": {}}},
            "date": iso(at)}


@dataclass
class SimInstance:
    """The mutable state of one simulated instance.

    `state` is the session in memory (what `connectionState` and `/metrics` report);
    `stored_status` the database column `fetchInstances` reports in v2 (None: same as `state`).
    `number` is the create-time `number` field, not the paired phone (that is `owner_jid`).
    """

    name: str
    state: str = "close"
    stored_status: str | None = None
    owner_jid: str | None = None
    number: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    disconnection_code: int | None = None
    disconnection_object: dict[str, Any] | None = None
    loaded: bool = True
    token: str = field(default_factory=new_token)
    id: str = field(default_factory=_new_id)
    socket_dead: bool = False
    """The session is "open" but its socket died unnoticed (issue #2403): logout cannot work."""
    disconnection_object_raw: str | None = None
    """Sent verbatim instead of `disconnection_object`: to serve broken JSON."""
    disconnection_at: datetime | None = None
    updated_at: datetime | None = None
    profile_name: str | None = None
    profile_pic_url: str | None = None
    profile_status: str = ""
    integration: str | None = "WHATSAPP-BAILEYS"
    counts: tuple[int, int, int] = (0, 0, 0)
    """`_count` of Message, Contact, Chat."""
    setting_id: str = field(default_factory=_cuid)
    qr_count: int = 0
    deleting_until: float | None = None
    """v2 deletes asynchronously: the instance stays listed until this monotonic time."""
    odd_fields: dict[str, Any] = field(default_factory=dict)
    """Listed verbatim over the simulated fields (v2 row, v1 `instance` object): what a foreign
    tool or a hand-edited database leaves behind."""

    @property
    def stored(self) -> str:
        return self.stored_status or self.state


class SimState:
    """The instances of one simulated server and the settings that shape its answers.

    `pairing`: the machine can reach WhatsApp, so `connect` produces QR codes (the recorded
    server could not: it answers `{"count": 0}`). `licensed`: a 2.4.0 server whose licence is
    activated; otherwise its business routes answer 503 LICENSE_REQUIRED. `expose`: v1's
    AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES (on in v1's image).
    """

    def __init__(
        self,
        *,
        api_key: str = "sim-key",
        version: str = "2.3.6",
        client_name: str = "evolution_exchange",
        metrics_enabled: bool = False,
        delete_delay: float = 0.0,
        pairing: bool = False,
        licensed: bool = True,
        expose: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        parsed = version_tuple(version)
        if parsed is None:
            raise ValueError(f"not a version: {version!r}")
        self.api_key = api_key
        self.version = version
        self.client_name = client_name
        self.metrics_enabled = metrics_enabled
        self.delete_delay = delete_delay
        self.pairing = pairing
        self.licensed = licensed
        self.expose = expose
        self._v = parsed
        self._v1 = parsed[0] < 2
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._instances: dict[str, SimInstance] = {}
        self.webhooks: WebhookSender | None = None
        """Set by `send_webhooks`: the state changes below then send Evolution's webhooks."""

    def send_webhooks(self, url: str, *, by_events: bool = False,
                      global_only: bool = False) -> WebhookSender:
        """Send webhooks to `url` from now on (WEBHOOK_GLOBAL_URL, or a per-instance one)."""
        self.webhooks = WebhookSender(url, server_url=self.url, v1=self._v1,
                                      by_events=by_events, global_only=global_only)
        return self.webhooks

    def _emit(self, event: str, instance: SimInstance, data: object) -> None:
        if self.webhooks is not None:
            self.webhooks.emit(event, instance.name, data, instance.owner_jid)

    def _emit_close(self, instance: SimInstance, code: int) -> None:
        if self.webhooks is not None:
            self.webhooks.terminal_close(instance.name, code, utcnow(),
                                         instance.disconnection_object, instance.owner_jid)

    @property
    def url(self) -> str:
        """Where the server is reachable; its answers name it (`GET /`, `/metrics`, v1 items)."""
        if not self._port:
            raise RuntimeError("the simulator is not serving")
        return f"http://{self._host}:{self._port}"

    # --- behaviour of the selected version ------------------------------------------------

    @property
    def api_line(self) -> str:
        return "v1" if self._v1 else "v2"

    def at_least(self, *version: int) -> bool:
        return self._v >= version

    @property
    def serves_metrics(self) -> bool:
        return not self._v1 and self.at_least(2, 3, 3) and self.metrics_enabled

    @property
    def _license_gate(self) -> bool:
        return not self._v1 and self.at_least(2, 4, 0) and not self.licensed

    @property
    def _rejects_open_delete(self) -> bool:
        return self._v < (1, 8, 4) if self._v1 else self._v < (2, 2, 1)

    @property
    def _awaits_logout_in_delete(self) -> bool:
        return not self._v1 and (2, 3, 7) <= self._v < (2, 4, 0)

    # --- state, for tests and the demo -----------------------------------------------------

    def add(self, name: str, **fields: Any) -> SimInstance:
        with self._lock:
            if name in self._instances:
                raise ValueError(f"instance {name!r} already exists")
            instance = SimInstance(name=name, **fields)
            self._instances[name] = instance
            return instance

    def get(self, name: str) -> SimInstance | None:
        with self._lock:
            self._purge()
            return self._instances.get(name)

    def remove(self, name: str) -> None:
        with self._lock:
            self._instances.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            self._purge()
            return list(self._instances)

    def set_state(
        self,
        name: str,
        state: str,
        *,
        stored_status: str | None = None,
        code: int | None = None,
        disconnect_object: dict[str, Any] | None = None,
    ) -> None:
        """Move a session; a `code` records a terminal close as Evolution does (never cleared)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        with self._lock:
            instance = self._instances[name]
            now = utcnow()
            instance.state = state
            instance.stored_status = stored_status
            instance.updated_at = now
            if code is not None:
                instance.disconnection_code = code
                instance.disconnection_object = disconnect_object
                instance.disconnection_object_raw = None
                instance.disconnection_at = now
            if state == "close" and code in TERMINAL_CODES:
                self._emit_close(instance, code)
            elif state != "close":
                reason = 428 if state == "refused" else 200
                self._emit("connection.update", instance,
                           {"instance": name, "state": state, "statusReason": reason})

    # --- transitions the routes share --------------------------------------------------------

    def _purge(self) -> None:
        now = time.monotonic()
        gone = [n for n, i in self._instances.items()
                if i.deleting_until is not None and i.deleting_until <= now]
        for name in gone:
            del self._instances[name]

    def _qr(self, instance: SimInstance) -> dict[str, Any]:
        instance.qr_count += 1
        return {"pairingCode": None, "code": f"2@{secrets.token_urlsafe(24)}",
                "base64": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAVwAAAFcCAYAAAC",
                "count": instance.qr_count}

    def _start_session(self, instance: SimInstance) -> dict[str, Any]:
        """A connection attempt: with WhatsApp reachable a QR appears (and the database says
        `connecting`); without, the session keeps trying and no QR ever comes."""
        if self.pairing:
            instance.state = "connecting"
            instance.stored_status = None
            return self._qr(instance)
        instance.stored_status = instance.stored
        instance.state = "connecting"
        return {"count": 0}

    def _log_out(self, instance: SimInstance) -> None:
        """Evolution's close-401 path: recorded (v2), then its webhooks."""
        now = utcnow()
        instance.state = "close"
        instance.stored_status = None
        instance.socket_dead = False
        instance.updated_at = now
        if not self._v1:
            instance.disconnection_code = 401
            instance.disconnection_object = api_logout_object(instance.name, now)
            instance.disconnection_object_raw = None
            instance.disconnection_at = now
        self._emit_close(instance, 401)
