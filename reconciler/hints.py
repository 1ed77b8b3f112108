"""Hints and the work queue (SPEC 4.5): one entry per (server, instance name).

A hint says only that an instance may have changed; the targeted reconcile that drains its entry
reads the truth. So a burst of hints for one name is one entry (and one reconcile, plus one more
if a hint arrives while it runs), each server's entries are drained at most `rps` per second,
and a failed reconcile comes back after a per-name exponential backoff.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from reconciler.observability import HINT_SOURCES as SOURCES


@dataclass(frozen=True)
class Hint:
    source: str
    """`tombstone`, `row` or `webhook` (SPEC 6 `hints_total{source}`)."""
    server: str
    """The server it concerns; empty when its source cannot tell (a row, a tombstone)."""
    name: str
    passed_on: bool = False
    """Sent by another replica to this server's leader: never passed on again."""

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "server": self.server, "name": self.name,
                           "passed_on": self.passed_on})

    @classmethod
    def from_json(cls, payload: str) -> Hint | None:
        """A NOTIFY payload; None for anything malformed (a hint is never worth a crash)."""
        try:
            body = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        source, server, name = body.get("source"), body.get("server", ""), body.get("name")
        if source not in SOURCES or not isinstance(server, str) or not isinstance(name, str):
            return None
        return cls(source, server, name, bool(body.get("passed_on"))) if name else None


@dataclass
class Entry:
    server: str
    name: str
    first_at: float
    """When the oldest hint this entry answers arrived (`hint_to_converged_seconds`)."""
    sources: set[str] = field(default_factory=set)
    not_before: float = 0.0


class WorkQueue:
    """Entries per server, de-duplicated by name; `take(server)` hands them out in order."""

    def __init__(self, rps: float, *, backoff_base: float = 1.0, backoff_cap: float = 300.0,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self._interval = 1.0 / rps if rps > 0 else 0.0
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._on_depth = on_depth or (lambda _depth: None)
        self._pending: dict[str, dict[str, Entry]] = {}
        self._running: dict[tuple[str, str], Entry | None] = {}
        """Entries being reconciled; the value collects hints that arrive meanwhile."""
        self._failures: dict[tuple[str, str], int] = {}
        self._next_slot: dict[str, float] = {}
        self._changed: dict[str, anyio.Event] = {}

    @property
    def depth(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def put(self, server: str, name: str, source: str, at: float | None = None) -> None:
        at = anyio.current_time() if at is None else at
        key = (server, name)
        if key in self._running:
            later = self._running[key] or Entry(server, name, at)
            later.sources.add(source)
            self._running[key] = later
            return
        entry = self._pending.setdefault(server, {}).get(name)
        if entry is None:
            entry = self._pending[server][name] = Entry(server, name, at)
        entry.first_at = min(entry.first_at, at)
        entry.sources.add(source)
        self._wake(server)

    async def take(self, server: str) -> Entry:
        """The next entry of `server` that is due, once the server's rate allows."""
        while True:
            now = anyio.current_time()
            pending = self._pending.get(server, {})
            due = [e for e in pending.values() if e.not_before <= now]
            if due:
                slot = max(now, self._next_slot.get(server, 0.0))
                if slot > now:
                    await anyio.sleep(slot - now)
                    continue
                entry = min(due, key=lambda e: e.first_at)
                del pending[entry.name]
                self._next_slot[server] = slot + self._interval
                self._running[(server, entry.name)] = None
                self._on_depth(self.depth)
                return entry
            wake = self._changed.setdefault(server, anyio.Event())
            wait = min((e.not_before for e in pending.values()), default=math.inf) - now
            with anyio.move_on_after(wait if wait != math.inf else None):
                await wake.wait()
            if self._changed.get(server) is wake and wake.is_set():
                self._changed[server] = anyio.Event()

    def done(self, entry: Entry, *, ok: bool) -> None:
        """Finished: on failure the entry comes back after its backoff (with any hint that
        arrived meanwhile); on success only those hints come back."""
        key = (entry.server, entry.name)
        later = self._running.pop(key, None)
        if ok:
            self._failures.pop(key, None)
            if later is not None:
                self._requeue(later, 0.0)
            return
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self._backoff_cap, self._backoff_base * 2 ** (failures - 1))
        if later is not None:
            entry.sources |= later.sources
        self._requeue(entry, anyio.current_time() + delay * random.uniform(0.8, 1.2))

    def drop(self, entry: Entry) -> None:
        """Given up on without a verdict (this replica no longer leads its server)."""
        self._running.pop((entry.server, entry.name), None)
        self._failures.pop((entry.server, entry.name), None)

    def _requeue(self, entry: Entry, not_before: float) -> None:
        pending = self._pending.setdefault(entry.server, {})
        known = pending.get(entry.name)
        if known is not None:
            known.first_at = min(known.first_at, entry.first_at)
            known.sources |= entry.sources
        else:
            entry.not_before = not_before
            pending[entry.name] = entry
        self._wake(entry.server)

    def _wake(self, server: str) -> None:
        self._on_depth(self.depth)
        event = self._changed.get(server)
        if event is not None:
            event.set()
