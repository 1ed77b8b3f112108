"""A simulated Evolution API server on loopback, for tests, the demo and docker-compose.

It answers as the real servers do (`shared/evolution-api/`: CONTRACT.md, recorded-v2.3.6/): the
same routes, guard order (a missing name is 404 even with a bad key), bodies (every Prisma field,
in order) and the quirks of the selected version: 1.8.2, 1.8.7 (v1 branch head), 2.2.0, 2.3.6,
2.3.7, 2.4.0-rc2. Tests change its state directly and inject faults per endpoint. This module
serves: dispatch, faults and the embedded uvicorn server; `routes`, `wire` and `state` answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
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

from reconciler.simulator.routes import Routes
from reconciler.simulator.state import device_removed_object, utcnow
from reconciler.simulator.wire import JSON_MEDIA, LICENSE_REQUIRED_BODY, envelope, json_response

ENDPOINTS = ("root", "metrics", "create", "fetchInstances", "connectionState", "connect",
             "restart", "logout", "delete", "setPresence", "unknown")


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


class Simulator(Routes):
    """An Evolution API server of a chosen version, in this process, on 127.0.0.1 (the settings
    are `SimState`'s)."""

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
        super().__init__(api_key=api_key, version=version, client_name=client_name,
                         metrics_enabled=metrics_enabled, delete_delay=delete_delay,
                         pairing=pairing, licensed=licensed, expose=expose, host=host, port=port)
        self.requests: list[tuple[str, str]] = []
        """(method, decoded path and query) of every request received."""
        self.raw_requests: list[tuple[str, str]] = []
        """(method, request target as sent on the wire): what a client encoded, and how."""
        self.in_flight = 0
        self.max_in_flight = 0
        """Requests being answered at once, now and at most so far: what a client's
        concurrency limit let through (tests)."""
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

    # --- faults, for tests -----------------------------------------------------------------

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

    # --- serving ---------------------------------------------------------------------------

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
        if self.webhooks is not None:
            self.webhooks.close()
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
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
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
                return envelope(404, [f"Cannot {method} {path}"])
            if self._license_gate and endpoint != "root":
                return json_response(503, LICENSE_REQUIRED_BODY)
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
            return envelope(503, ["the simulator is stopping"])
        if fault.status is None and fault.body is None:
            return None
        status = fault.status or 200
        if fault.body is None:
            return envelope(status, [HTTPStatus(status).phrase])
        if isinstance(fault.body, dict | list):
            content = json.dumps(fault.body).encode()
        elif isinstance(fault.body, str):
            content = fault.body.encode()
        else:
            content = fault.body
        media = "text/html; charset=utf-8" if content.lstrip()[:1] == b"<" else JSON_MEDIA
        if fault.truncate_at is not None:
            return _TruncatedResponse(content, status, media, fault.truncate_at)
        return Response(content, status_code=status, media_type=media)


def seed(simulator: Simulator, count: int, *, rng: random.Random | None = None) -> list[str]:
    """Fill a simulator with `count` platform-named instances in a realistic mix of states."""
    rng = rng or random.Random(count)
    names = []
    base = utcnow() - timedelta(days=30)
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
