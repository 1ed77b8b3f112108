"""The soak run's Evolution servers: simulators in a process of their own, driven over a pipe.

`benchmarks/soak.py` starts `serve()` in a child process (so the servers keep answering while the
orchestrator is busy, as real servers would) and sends it commands. Each simulator records every
`logout` and `delete` call it receives with the wall-clock time it arrived: the soak's verdict on
wrongful deletions is taken from the server's own record, not from what the daemon says it did.
Loopback only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from starlette.responses import Response

from reconciler.simulator import Simulator

# The simulator methods the orchestrator may call, by name.
ALLOWED = frozenset({"add", "set_state", "fault", "clear_faults", "pair", "restart_sessions"})


@dataclass(frozen=True)
class DestructiveCall:
    """A logout or delete request as the server received it."""

    at: float
    server: str
    endpoint: str
    name: str
    existed: bool


class RecordingSimulator(Simulator):
    """A simulator that keeps a log of the destructive calls it received (with arrival time)."""

    def __init__(self, server: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server = server
        self.destructive: list[DestructiveCall] = []

    def _by_name(self, endpoint: str, name: str, key: str | None, raw: bytes) -> Response:
        # Called under the simulator's lock, before the call changes anything.
        if endpoint in ("logout", "delete"):
            self.destructive.append(DestructiveCall(
                time.time(), self.server, endpoint, name, name in self._instances))
        return super()._by_name(endpoint, name, key, raw)

    def pair(self, name: str, owner_jid: str) -> None:
        """The QR was scanned: the session is open on `owner_jid` (memory and database)."""
        with self._lock:
            instance = self._instances[name]
            instance.owner_jid = owner_jid
            instance.profile_name = "Soak clinic"
        self.set_state(name, "open")

    def restart_sessions(self) -> None:
        """Evolution restarted: every session is `connecting` again, the database unchanged."""
        with self._lock:
            for instance in self._instances.values():
                instance.stored_status = instance.stored
                instance.state = "connecting"

    def snapshot(self) -> list[dict[str, Any]]:
        """Every listed instance's live state, as the soak's convergence check needs it."""
        with self._lock:
            self._purge()
            return [{"name": i.name, "state": i.state, "stored": i.stored, "owner_jid": i.owner_jid,
                     "code": i.disconnection_code if i.state == "close" else None}
                    for i in self._instances.values() if i.deleting_until is None]


def serve(conn: Connection, servers: dict[str, int], api_key: str) -> None:
    """Serve one simulator per `servers` entry (name -> port) until told to stop.

    Protocol: the child sends `{name: url}` once serving, then answers each command tuple with
    `("ok", result)` or `("error", repr)`: `("call", server, method, args, kwargs)`,
    `("snapshot", server)`, `("destructive",)`, `("destructive_count",)`, `("stop",)`.
    """
    sims = {name: RecordingSimulator(name, api_key=api_key, version="2.3.6",
                                     client_name=f"soak_{name}", metrics_enabled=True,
                                     host="127.0.0.1", port=port)
            for name, port in servers.items()}
    for sim in sims.values():
        sim.start_in_thread()
    conn.send({name: sim.url for name, sim in sims.items()})
    try:
        while True:
            command = conn.recv()
            try:
                if command[0] == "stop":
                    conn.send(("ok", None))
                    return
                if command[0] == "call":
                    _, server, method, args, kwargs = command
                    if method not in ALLOWED:
                        raise ValueError(f"method not allowed: {method}")
                    getattr(sims[server], method)(*args, **kwargs)
                    conn.send(("ok", None))
                elif command[0] == "snapshot":
                    conn.send(("ok", sims[command[1]].snapshot()))
                elif command[0] == "destructive_count":
                    conn.send(("ok", sum(len(s.destructive) for s in sims.values())))
                elif command[0] == "destructive":
                    calls = sorted((c for s in sims.values() for c in list(s.destructive)),
                                   key=lambda c: c.at)
                    conn.send(("ok", calls))
                else:
                    raise ValueError(f"unknown command {command[0]!r}")
            except Exception as exc:
                conn.send(("error", repr(exc)))
    finally:
        for sim in sims.values():
            sim.stop_thread()
