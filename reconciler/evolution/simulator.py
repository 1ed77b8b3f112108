"""A simulated Evolution API server on loopback, for tests, the demo and docker-compose.

It answers as the real servers do (`shared/evolution-api/`: CONTRACT.md, recorded-v2.3.6/): the
same routes, guard order (a missing name is 404 even with a bad key), bodies (every Prisma field,
in order) and the quirks of the selected version: 1.8.2, 1.8.7 (v1 branch head), 2.2.0, 2.3.6,
2.3.7, 2.4.0-rc2. Tests change its state directly and inject faults per endpoint.

    python -m reconciler.evolution.simulator --port 8080 --api-key K --version 2.3.6 --seed 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from reconciler.evolution.wire import version_tuple

VERSIONS = ("1.8.2", "1.8.7", "2.2.0", "2.3.6", "2.3.7", "2.4.0-rc2")
ENDPOINTS = ("root", "metrics", "create", "fetchInstances", "connectionState", "connect",
             "restart", "logout", "delete", "setPresence", "unknown")
WELCOME = "Welcome to the Evolution API, it is working!"
DOCUMENTATION = "https://doc.evolution-api.com"
WHATSAPP_WEB_VERSION = "2.3000.1027934701"
INTEGRATIONS = ("WHATSAPP-BAILEYS", "WHATSAPP-BUSINESS", "EVOLUTION")
PRESENCES = ("unavailable", "available", "composing", "recording", "paused")
LICENSE_REQUIRED_BODY = {
    "error": "service not activated",
    "code": "LICENSE_REQUIRED",
    "message": "Activate this Evolution API server at /manager to use the API",
}
_JSON = "application/json; charset=utf-8"
_METRICS = "text/plain; charset=utf-8; version=0.0.4"
_STATES = ("open", "connecting", "close")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_token() -> str:
    return str(uuid.uuid4()).upper()


def _new_id() -> str:
    return str(uuid.uuid4())


def _cuid() -> str:
    """Prisma's default id for `Setting` rows: a `c` and 24 lowercase letters and digits."""
    return "c" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(24))


def _iso(moment: datetime | None) -> str | None:
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
            "date": _iso(at)}


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
            "date": _iso(at)}


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
    created_at: datetime = field(default_factory=_utcnow)
    disconnection_code: int | None = None
    disconnection_object: dict[str, Any] | None = None
    loaded: bool = True
    token: str = field(default_factory=_new_token)
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


@dataclass
class _Fault:
    status: int | None
    body: str | bytes | dict[str, Any] | list[Any] | None
    delay: float
    hang: bool
    times: int | None
    truncate_at: int | None


class _TruncatedResponse(Response):
    """Declares the whole body's length, sends only its start, then the connection drops."""

    def __init__(self, content: bytes, status_code: int, media_type: str, keep: int) -> None:
        super().__init__(content, status_code=status_code, media_type=media_type)
        self._keep = keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: self._keep],
                    "more_body": False})


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers (the host process owns those) and with a prompt stop:
    tests start and stop hundreds of these, and uvicorn's polling would cost 0.2 s a stop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.wake = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def stop(self) -> None:
        self.should_exit = True
        self.wake.set()

    async def main_loop(self) -> None:
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        in_flight = list(self.server_state.tasks)
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=self.config.timeout_graceful_shutdown)
            for task in late:
                task.cancel()
        await asyncio.sleep(0)


def _json(status: int, body: Any) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type=_JSON)


def _envelope(status: int, message: Any) -> Response:
    return _json(status, {"status": status, "error": HTTPStatus(status).phrase,
                          "response": {"message": message}})


def _success(message: str) -> Response:
    return _json(200, {"status": "SUCCESS", "error": False, "response": {"message": message}})


def _not_exist(name: str) -> Response:
    return _envelope(404, [f'The "{name}" instance does not exist'])


def _v8_json_error(raw: str, exc: json.JSONDecodeError | None) -> str:
    """Node's `SyntaxError` text as body-parser reports it, for the bodies clients send."""
    stripped = raw.lstrip()
    if exc is None:
        return f"Unexpected token '{stripped[:1]}', \"{raw}\" is not valid JSON"
    if exc.msg.startswith("Expecting property name"):
        return f"Expected property name or '}}' in JSON at position {exc.pos}"
    if exc.pos >= len(raw):
        return "Unexpected end of JSON input"
    return f"Unexpected token '{raw[exc.pos]}', \"{raw}\" is not valid JSON"


class Simulator:
    """An Evolution API server of a chosen version, in this process, on 127.0.0.1.

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
        self.requests: list[tuple[str, str]] = []
        """(method, decoded path and query) of every request received."""
        self.raw_requests: list[tuple[str, str]] = []
        """(method, request target as sent on the wire): what a client encoded, and how."""
        self._v = parsed
        self._v1 = parsed[0] < 2
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._instances: dict[str, SimInstance] = {}
        self._faults: dict[str, _Fault] = {}
        self._server: _EmbeddedServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self.app = Starlette(routes=[Route(
            "/{path:path}", self._handle,
            methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])])

    # --- behaviour of the selected version ------------------------------------------------

    @property
    def api_line(self) -> str:
        return "v1" if self._v1 else "v2"

    def _at_least(self, *version: int) -> bool:
        return self._v >= version

    @property
    def serves_metrics(self) -> bool:
        return not self._v1 and self._at_least(2, 3, 3) and self.metrics_enabled

    @property
    def _license_gate(self) -> bool:
        return not self._v1 and self._at_least(2, 4, 0) and not self.licensed

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
        if state not in _STATES:
            raise ValueError(f"state must be one of {_STATES}")
        with self._lock:
            instance = self._instances[name]
            now = _utcnow()
            instance.state = state
            instance.stored_status = stored_status
            instance.updated_at = now
            if code is not None:
                instance.disconnection_code = code
                instance.disconnection_object = disconnect_object
                instance.disconnection_object_raw = None
                instance.disconnection_at = now

    def fault(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        body: str | bytes | dict[str, Any] | list[Any] | None = None,
        delay: float = 0.0,
        hang: bool = False,
        times: int | None = None,
        truncate_at: int | None = None,
    ) -> None:
        """Make `endpoint` misbehave: answer `status`/`body` instead, after `delay`, or never
        (`hang`); `truncate_at` drops the connection after that many body bytes. `times=None`
        lasts until `clear_faults`."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}")
        with self._lock:
            self._faults[endpoint] = _Fault(status, body, delay, hang, times, truncate_at)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(endpoint)
            if fault is not None and fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[endpoint]
            return fault

    def _purge(self) -> None:
        now = time.monotonic()
        gone = [n for n, i in self._instances.items()
                if i.deleting_until is not None and i.deleting_until <= now]
        for name in gone:
            del self._instances[name]

    # --- serving ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("the simulator is not serving")
        return f"http://{self._host}:{self._port}"

    def _listen(self) -> socket.socket:
        """The listening socket; TCP_NODELAY, or every answer waits 40 ms for a delayed ACK."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self._host, self._port))
        sock.listen(128)
        self._port = sock.getsockname()[1]
        return sock

    async def _start(self) -> None:
        sock = self._listen()
        config = uvicorn.Config(self.app, log_config=None, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self._server = _EmbeddedServer(config)
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        with anyio.fail_after(10):
            while not self._server.started:
                if self._serve_task.done():
                    self._serve_task.result()
                    raise RuntimeError("the simulator stopped while starting")
                await asyncio.sleep(0.005)

    async def _stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._server is not None and self._serve_task is not None:
            self._server.stop()
            await self._serve_task
        self._server = None
        self._serve_task = None

    async def __aenter__(self) -> Simulator:
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    def start_in_thread(self) -> str:
        """Serve from a background thread with its own event loop; returns the URL."""
        ready = threading.Event()

        async def serve() -> None:
            try:
                await self._start()
            except BaseException as exc:
                self._thread_error = exc
                ready.set()
                raise
            ready.set()
            assert self._stopping is not None
            await self._stopping.wait()
            await self._stop()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),),
                                        name="evolution-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the simulator did not start within 10 s")
        if self._thread_error is not None:
            raise RuntimeError("the simulator failed to start") from self._thread_error
        return self.url

    def stop_thread(self) -> None:
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def run(self) -> None:
        """Serve in the foreground until SIGINT/SIGTERM (the command line)."""
        sock = self._listen()
        config = uvicorn.Config(self.app, log_level="info", lifespan="off")
        print(f"Evolution API {self.version} simulator on {self.url}", flush=True)
        uvicorn.Server(config).run(sockets=[sock])

    # --- dispatch --------------------------------------------------------------------------

    def _route(self, method: str, raw_path: str) -> tuple[str | None, str | None]:
        """Express matches the raw path: the name is one segment (`[^/]+`), decoded after."""
        fixed = {("GET", "/"): "root", ("GET", "/metrics"): "metrics",
                 ("POST", "/instance/create"): "create",
                 ("GET", "/instance/fetchInstances"): "fetchInstances"}
        if (method, raw_path) in fixed:
            return fixed[(method, raw_path)], None
        match = re.fullmatch(r"/instance/([A-Za-z]+)/([^/]+)", raw_path)
        if not match:
            return None, None
        methods = {"connectionState": "GET", "connect": "GET", "logout": "DELETE",
                   "delete": "DELETE", "setPresence": "POST",
                   "restart": "PUT" if self._v1 else "POST"}
        if methods.get(match[1]) != method:
            return None, None
        return match[1], unquote(match[2])

    async def _handle(self, request: Request) -> Response:
        method = request.method
        path: str = request.scope["path"]
        raw_path = request.scope.get("raw_path") or quote(path).encode()
        target = raw_path.decode("latin-1")
        query = request.url.query
        with self._lock:
            self.requests.append((method, path + (f"?{query}" if query else "")))
            self.raw_requests.append((method, target + (f"?{query}" if query else "")))
        endpoint, name = self._route(method, target)
        fault = self._take_fault(endpoint or "unknown")
        if fault is not None:
            faulted = await self._apply(fault)
            if faulted is not None:
                return faulted
        raw = await request.body() if endpoint in ("create", "setPresence") else b""
        key = request.headers.get("apikey")
        with self._lock:
            self._purge()
            if endpoint is None:
                return _envelope(404, [f"Cannot {method} {path}"])
            if self._license_gate and endpoint != "root":
                return _json(503, LICENSE_REQUIRED_BODY)
            if endpoint == "root":
                return self._root()
            if endpoint == "metrics":
                return self._metrics()
            if endpoint == "create":
                return self._create(key, raw)
            if endpoint == "fetchInstances":
                return self._fetch(key, request.query_params)
            assert name is not None
            return self._by_name(endpoint, name, key, raw)

    async def _apply(self, fault: _Fault) -> Response | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.hang:
            assert self._stopping is not None
            await self._stopping.wait()
            return _envelope(503, ["the simulator is stopping"])
        if fault.status is None and fault.body is None:
            return None
        status = fault.status or 200
        if fault.body is None:
            return _envelope(status, [HTTPStatus(status).phrase])
        if isinstance(fault.body, dict | list):
            content = json.dumps(fault.body).encode()
        elif isinstance(fault.body, str):
            content = fault.body.encode()
        else:
            content = fault.body
        media = "text/html; charset=utf-8" if content.lstrip()[:1] == b"<" else _JSON
        if fault.truncate_at is not None:
            return _TruncatedResponse(content, status, media, fault.truncate_at)
        return Response(content, status_code=status, media_type=media)

    def _authorized(self, key: str | None, instance: SimInstance | None) -> bool:
        if not key:
            return False
        return key == self.api_key or (instance is not None and key == instance.token)

    # --- routes ----------------------------------------------------------------------------

    def _root(self) -> Response:
        body: dict[str, Any] = {"status": 200, "message": WELCOME, "version": self.version}
        if self._v1:
            body |= {"swagger": f"{self.url}/docs", "manager": f"{self.url}/manager",
                     "documentation": DOCUMENTATION}
            return _json(200, body)
        body |= {"clientName": self.client_name, "manager": f"{self.url}/manager",
                 "documentation": DOCUMENTATION}
        if self._at_least(2, 3, 0):
            body["whatsappWebVersion"] = WHATSAPP_WEB_VERSION
        return _json(200, body)

    def _metrics(self) -> Response:
        if not self.serves_metrics:
            return _envelope(404, ["Cannot GET /metrics"])
        loaded = [i for i in self._instances.values() if i.loaded]

        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        lines = [
            "# HELP evolution_environment_info Environment information",
            "# TYPE evolution_environment_info gauge",
            f'evolution_environment_info{{version="{esc(self.version)}",'
            f'clientName="{esc(self.client_name)}",serverUrl="{esc(self.url)}"}} 1',
            "# HELP evolution_instances_total Total number of instances",
            "# TYPE evolution_instances_total gauge",
            f"evolution_instances_total {len(loaded)}",
            "# HELP evolution_instance_up 1 if instance state is open, else 0",
            "# TYPE evolution_instance_up gauge",
            "# HELP evolution_instance_state Instance state as a labelled metric",
            "# TYPE evolution_instance_state gauge",
        ]
        for instance in loaded:
            labels = f'instance="{esc(instance.name)}",' \
                     f'integration="{esc(instance.integration or INTEGRATIONS[0])}"'
            state = instance.state if instance.state in _STATES else "unknown"
            lines.append(f"evolution_instance_up{{{labels}}} {int(state == 'open')}")
            lines.append(f'evolution_instance_state{{{labels},state="{state}"}} 1')
        return Response(("\n".join(lines) + "\n").encode(), media_type=_METRICS,
                        headers={"Cache-Control": "no-cache, no-store, must-revalidate"})

    def _v2_row(self, instance: SimInstance) -> dict[str, Any]:
        raw_object = instance.disconnection_object_raw
        if raw_object is None and instance.disconnection_object is not None:
            raw_object = json.dumps(instance.disconnection_object, separators=(",", ":"))
        created = _iso(instance.created_at)
        row: dict[str, Any] = {
            "id": instance.id,
            "name": instance.name,
            "connectionStatus": instance.stored,
            "ownerJid": instance.owner_jid,
            "profileName": instance.profile_name,
            "profilePicUrl": instance.profile_pic_url,
            "integration": instance.integration or INTEGRATIONS[0],
            "number": instance.number,
            "businessId": None,
            "token": instance.token,
            "clientName": self.client_name,
            "disconnectionReasonCode": instance.disconnection_code,
            "disconnectionObject": raw_object,
            "disconnectionAt": _iso(instance.disconnection_at),
            "createdAt": created,
            "updatedAt": _iso(instance.updated_at) or created,
            "Chatwoot": None,
            "Proxy": None,
            "Rabbitmq": None,
        }
        if self._at_least(2, 3, 0):
            row["Nats"] = None
        setting: dict[str, Any] = {
            "id": instance.setting_id, "rejectCall": False, "msgCall": "",
            "groupsIgnore": False, "alwaysOnline": False, "readMessages": False,
            "readStatus": False, "syncFullHistory": False}
        if self._at_least(2, 2, 1):
            setting["wavoipToken"] = ""
        setting |= {"createdAt": created, "updatedAt": created, "instanceId": instance.id}
        messages, contacts, chats = instance.counts
        row |= {"Sqs": None, "Websocket": None, "Setting": setting,
                "_count": {"Message": messages, "Contact": contacts, "Chat": chats}}
        return row | instance.odd_fields

    def _v1_item(self, instance: SimInstance) -> dict[str, Any]:
        inner: dict[str, Any] = {"instanceName": instance.name, "instanceId": instance.id}
        if instance.state == "open":
            inner |= {"owner": instance.owner_jid,
                      "profileName": instance.profile_name or "not loaded",
                      "profilePictureUrl": instance.profile_pic_url,
                      "profileStatus": instance.profile_status}
        inner["status"] = instance.state
        if self.expose:
            webhook = f"{self.url}/webhook/whatsapp/{instance.name}"
            integration: dict[str, Any] = (
                {"integration": instance.integration, "number": instance.number or "",
                 "token": "", "webhook_wa_business": webhook}
                if instance.integration else {"token": instance.token,
                                              "webhook_wa_business": webhook})
            inner |= {"serverUrl": self.url, "apikey": instance.token,
                      "integration": integration}
        return {"instance": inner | instance.odd_fields}

    def _fetch(self, key: str | None, params: Mapping[str, str]) -> Response:
        if self._v1:
            return self._fetch_v1(key, params.get("instanceName"))
        name = params.get("instanceName")
        instance_id = params.get("instanceId")
        number = params.get("number")
        everything = list(self._instances.values())
        if key and key == self.api_key:
            if instance_id or number:
                wanted = instance_id or number
                match = next((i for i in everything
                              if (i.id == instance_id if instance_id else i.number == number)),
                             None)
                if match is None or not match.loaded:
                    return _envelope(404, [f'Instance "{wanted}" not found'])
                return _json(200, [self._v2_row(match)])
            if name is not None:
                found = self._instances.get(name)
                if found is None or not found.loaded:
                    return _envelope(404, [f'Instance "{name}" not found'])
                return _json(200, [self._v2_row(found)])
            return _json(200, [self._v2_row(i) for i in everything])
        rows = [self._v2_row(i) for i in everything
                if key and i.token == key and (name is None or i.name == name)
                and (instance_id is None or i.id == instance_id)]
        if not rows:
            return _envelope(401, "Unauthorized")
        return _json(200, rows)

    def _fetch_v1(self, key: str | None, name: str | None) -> Response:
        loaded = [i for i in self._instances.values() if i.loaded]
        if key and key == self.api_key:
            if name is None:
                return _json(200, [self._v1_item(i) for i in loaded])
            found = self._instances.get(name)
            if found is not None and found.loaded:
                return _json(200, self._v1_item(found))
            message = [f'Instance "{name}" not found']
            if self._at_least(1, 8, 4):
                return _json(500, {"error": True, "message": message})
            return _envelope(404, message)
        own = [i for i in loaded if key and i.token == key]
        if not own:
            return _envelope(401, "Unauthorized")
        return _json(200, [self._v1_item(own[0])])

    def _create(self, key: str | None, raw: bytes) -> Response:
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            return _json(400, {"status": 400, "error": "Internal Server Error",
                               "response": {"message": _v8_json_error(text, exc)}})
        if not isinstance(body, dict | list):
            return _json(400, {"status": 400, "error": "Internal Server Error",
                               "response": {"message": _v8_json_error(text, None)}})
        fields = body if isinstance(body, dict) else {}
        name = fields.get("instanceName")
        if name is None and self._instances:
            return _envelope(403, ['This name "undefined" is already in use.'])
        name = "" if name is None else str(name)
        if name in self._instances:
            return _envelope(403, [f'This name "{name}" is already in use.'])
        if key != self.api_key:
            return _envelope(401, "Unauthorized")
        if self._v1:
            return self._create_v1(name, fields)
        integration = fields.get("integration")
        if integration not in INTEGRATIONS:
            return _envelope(400, ["Invalid integration"])
        if self._at_least(2, 4, 0):
            name = name.strip()
        token = fields.get("token") or _new_token()
        instance = SimInstance(name=name, token=str(token), integration=str(integration),
                               number=fields.get("number"),
                               state="close" if integration == INTEGRATIONS[0] else "open")
        self._instances[name] = instance
        qrcode = self._start_session(instance) if fields.get("qrcode") is True else None
        status = instance.state if self.pairing or qrcode is None else "close"
        webhook = fields.get("webhook")
        hooks: dict[str, Any] = {}
        if isinstance(webhook, dict) and webhook.get("url"):
            hooks = {"webhookUrl": webhook["url"],
                     "webhookByEvents": bool(webhook.get("byEvents", False)),
                     "webhookBase64": bool(webhook.get("base64", False))}
        answer: dict[str, Any] = {
            "instance": {"instanceName": name, "instanceId": instance.id,
                         "integration": integration, "webhookWaBusiness": None,
                         "accessTokenWaBusiness": "", "status": status},
            "hash": instance.token, "webhook": hooks, "websocket": {}, "rabbitmq": {}}
        if self._at_least(2, 3, 0):
            answer["nats"] = {}
        settings: dict[str, Any] = {
            "rejectCall": False, "msgCall": "", "groupsIgnore": False, "alwaysOnline": False,
            "readMessages": False, "readStatus": False, "syncFullHistory": False}
        if self._at_least(2, 2, 1):
            settings["wavoipToken"] = ""
        answer |= {"sqs": {}, "settings": settings}
        if qrcode is not None:
            answer["qrcode"] = qrcode
        return _json(201, answer)

    def _create_v1(self, name: str, fields: dict[str, Any]) -> Response:
        token = fields.get("token")
        tokens = {i.token for i in self._instances.values()}
        if (token and token in tokens) or (not token and not self.expose and self._instances):
            return _envelope(400, ["Token already exists"])
        integration = fields.get("integration")
        instance = SimInstance(name=name, token=str(token or _new_token()),
                               integration=integration, number=fields.get("number"))
        self._instances[name] = instance
        qrcode = self._start_session(instance) if fields.get("qrcode") is True else None
        webhook: dict[str, Any] = {}
        if isinstance(fields.get("webhook"), str):
            webhook = {"webhook": fields["webhook"],
                       "webhook_by_events": bool(fields.get("webhook_by_events", False)),
                       "webhook_base64": bool(fields.get("webhook_base64", False)),
                       "events": fields.get("events", [])}
        answer: dict[str, Any] = {
            "instance": {"instanceName": name, "instanceId": instance.id,
                         "integration": integration or INTEGRATIONS[0],
                         "webhook_wa_business": None, "access_token_wa_business": "",
                         "status": "created"},
            "hash": {"apikey": instance.token},
            "webhook": webhook, "websocket": {}, "rabbitmq": {}, "sqs": {},
            "typebot": {"enabled": False},
            "settings": {"reject_call": False, "msg_call": "",
                         "groups_ignore": bool(fields.get("groups_ignore", True)),
                         "always_online": False, "read_messages": False, "read_status": False,
                         "sync_full_history": False, "wavoipToken": ""}}
        if qrcode is not None:
            answer["qrcode"] = qrcode
        return _json(201, answer)

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
        now = _utcnow()
        instance.state = "close"
        instance.stored_status = None
        instance.socket_dead = False
        instance.updated_at = now
        if not self._v1:
            instance.disconnection_code = 401
            instance.disconnection_object = api_logout_object(instance.name, now)
            instance.disconnection_object_raw = None
            instance.disconnection_at = now

    def _by_name(self, endpoint: str, name: str, key: str | None, raw: bytes) -> Response:
        instance = self._instances.get(name)
        if instance is None:
            return _not_exist(name)
        if not self._authorized(key, instance):
            return _envelope(401, "Unauthorized")
        if endpoint == "connectionState":
            return self._connection_state(instance)
        if endpoint == "connect":
            return self._connect(instance)
        if endpoint == "restart":
            return self._restart(instance)
        if endpoint == "logout":
            return self._logout(instance)
        if endpoint == "delete":
            return self._delete(instance)
        return self._set_presence(instance, raw)

    def _connection_state(self, instance: SimInstance) -> Response:
        if not instance.loaded:
            return _json(200, {"instance": {"instanceName": instance.name}})
        return _json(200, {"instance": {"instanceName": instance.name, "state": instance.state}})

    def _connect(self, instance: SimInstance) -> Response:
        if instance.state == "open":
            return self._connection_state(instance)
        if instance.state == "connecting":
            return _json(200, self._qr(instance) if self.pairing else {"count": 0})
        return _json(200, self._start_session(instance))

    def _restart(self, instance: SimInstance) -> Response:
        if self._v1:
            if instance.state == "open":
                return self._connection_state(instance)
            return Response(b"", status_code=200, media_type=_JSON)
        if instance.state == "close":
            return _json(200, {"error": True, "message": "[object Object]"})
        return self._connect(instance)

    def _logout(self, instance: SimInstance) -> Response:
        if not instance.loaded and not self._v1:
            return _success("Instance logged out")
        if instance.state == "close":
            if not self._v1 and self._at_least(2, 4, 0):
                return _success("Instance was already disconnected")
            return _envelope(400, [f'The "{instance.name}" instance is not connected'])
        if instance.socket_dead:
            if self._awaits_logout_in_delete:
                return _envelope(500, ["Error: Connection Closed"])
            if not self._v1 and self._at_least(2, 4, 0):
                self._log_out(instance)
            return _success("Instance logged out")
        self._log_out(instance)
        return _success("Instance logged out")

    def _delete(self, instance: SimInstance) -> Response:
        if instance.loaded and instance.state in ("open", "connecting"):
            if instance.state == "open" and self._rejects_open_delete:
                return _envelope(400, [f'The "{instance.name}" instance needs to be disconnected'])
            if instance.socket_dead and self._awaits_logout_in_delete:
                return _envelope(400, ["[object Object]"])
            if not instance.socket_dead:
                self._log_out(instance)
        if self._v1 or self.delete_delay <= 0:
            del self._instances[instance.name]
        elif instance.deleting_until is None:
            instance.deleting_until = time.monotonic() + self.delete_delay
        return _success("Instance deleted")

    def _set_presence(self, instance: SimInstance, raw: bytes) -> Response:
        if self._v1:
            return Response(b"", status_code=201, media_type=_JSON)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        presence = body.get("presence") if isinstance(body, dict) else None
        if presence not in PRESENCES:
            return _envelope(400, [[f"presence is not one of enum values: {','.join(PRESENCES)}"]])
        if instance.state != "open" or instance.socket_dead:
            return _envelope(400, ["Connection Closed"])
        return _json(201, {"presence": presence})


def seed(simulator: Simulator, count: int, *, rng: random.Random | None = None) -> list[str]:
    """Fill a simulator with `count` platform-named instances in a realistic mix of states."""
    rng = rng or random.Random(count)
    names = []
    base = _utcnow() - timedelta(days=30)
    for index in range(count):
        org = uuid.UUID(int=rng.getrandbits(128), version=4)
        created = base + timedelta(minutes=index)
        name = f"clinic-{org}-{int(created.timestamp() * 1000)}"
        kind = index % 5
        fields: dict[str, Any] = {"created_at": created}
        if kind in (0, 1, 2):
            fields |= {"state": "open", "owner_jid": f"55119{80000000 + index:08d}@s.whatsapp.net",
                       "profile_name": f"Clinic {index}"}
        elif kind == 3:
            fields |= {"state": "close", "owner_jid": f"55119{80000000 + index:08d}@s.whatsapp.net",
                       "disconnection_code": 401,
                       "disconnection_object": device_removed_object(created),
                       "disconnection_at": created}
        simulator.add(name, **fields)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.evolution.simulator",
        description="A simulated Evolution API server (for docker-compose and manual use).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key", default=os.environ.get("EVOLUTION_SIM_API_KEY", "sim-key"))
    parser.add_argument("--version", default="2.3.6", help=f"one of {', '.join(VERSIONS)}")
    parser.add_argument("--client-name", default="evolution_exchange")
    parser.add_argument("--metrics", action="store_true", help="serve /metrics (2.3.3 and later)")
    parser.add_argument("--delete-delay", type=float, default=0.0,
                        help="seconds a deleted v2 instance stays listed")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="start with N platform-named instances")
    args = parser.parse_args(argv)
    simulator = Simulator(api_key=args.api_key, version=args.version,
                          client_name=args.client_name, metrics_enabled=args.metrics,
                          delete_delay=args.delete_delay, host=args.host, port=args.port)
    seed(simulator, args.seed)
    simulator.run()


if __name__ == "__main__":
    main()
