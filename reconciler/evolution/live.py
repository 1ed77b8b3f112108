"""Reading v2 live states: `/metrics` where the server serves it, else paced `connectionState`
probes under a budget. `liveness` decides what to probe and what a result is still worth; this
module carries those decisions out and keeps what they need between passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Set
from dataclasses import replace

import anyio
import structlog

from reconciler.evolution.errors import EvolutionError
from reconciler.evolution.liveness import (
    Bucket,
    Probe,
    SampleMemo,
    choose_probes,
    fingerprint,
    parse_connection_state,
    parse_metrics,
    refill,
    state_from_last_probe,
)
from reconciler.evolution.transport import Transport
from reconciler.evolution.wire import instance_path, version_tuple
from reconciler.model import LiveState, ObservedInstance

UNKNOWN = LiveState.UNKNOWN
METRICS_SINCE = (2, 3, 3)
"""Evolution serves `/metrics` from 2.3.3, when `PROMETHEUS_METRICS=true`."""


class LiveReader:
    """The live states of one server's instances, pass after pass.

    `probe_rps` paces probes; `probe_burst` is how many seconds of it one pass may spend at once
    (a pass should not stall on probes: tombstones are reconciled in seconds); a probe result and
    a missing `/metrics` are both trusted for `probe_interval`.
    """

    def __init__(
        self,
        transport: Transport,
        log: structlog.typing.FilteringBoundLogger,
        *,
        probe_rps: float,
        probe_interval: float,
        probe_burst: float,
    ) -> None:
        self._transport = transport
        self._log = log
        self._probe_rps = probe_rps
        self._probe_interval = probe_interval
        self._probe_capacity = max(1.0, probe_rps * probe_burst)
        self._metrics_available: bool | None = None
        self._metrics_retry_at = 0.0
        self._probes: dict[str, Probe] = {}
        self._previous: frozenset[str] | None = None
        self._bucket = Bucket(self._probe_capacity, time.monotonic())
        self._next_probe_slot = 0.0
        self._probing_since: float | None = None
        self._next_budget_warning = 0.0
        self._samples = SampleMemo()
        self._attached: dict[str, tuple[ObservedInstance, LiveState, ObservedInstance]] = {}

    async def with_live(
        self, instances: tuple[ObservedInstance, ...],
        want: Callable[[], Awaitable[frozenset[str]]], scraped: dict[str, LiveState] | None,
    ) -> tuple[ObservedInstance, ...]:
        """`instances` with their live state: the `scrape`d one, else from probes; UNKNOWN where
        neither can tell. `want` (the names to probe first) is awaited only when probes are
        needed: the pass reads the database while the server is read."""
        live = scraped
        if live is None:
            live = await self._live_from_probes(instances, await want())
        return self._attach(instances, live)

    def _attach(self, instances: tuple[ObservedInstance, ...],
                live: Mapping[str, LiveState]) -> tuple[ObservedInstance, ...]:
        """Each instance with its state; an instance and state both as last pass (the listing
        cache hands back the same instance for unchanged bytes) get last pass's copy."""
        last, attached = self._attached, {}
        result = []
        for instance in instances:
            state = live.get(instance.name, UNKNOWN)
            known = last.get(instance.name)
            if known is not None and known[0] is instance and known[1] is state:
                copy = known[2]
            else:
                copy = instance if instance.live is state else replace(instance, live=state)
            attached[instance.name] = (instance, state, copy)
            result.append(copy)
        self._attached = attached
        return tuple(result)

    def _metrics_worth_trying(self, now: float, version: str | None) -> bool:
        parsed = version_tuple(version)
        if parsed is not None and parsed < METRICS_SINCE:
            return False
        return self._metrics_available is not False or now >= self._metrics_retry_at

    async def scrape(self, version: str | None) -> dict[str, LiveState] | None:
        """Every live state from `/metrics`, when the server serves it; else None (probes)."""
        now = time.monotonic()
        if not self._metrics_worth_trying(now, version):
            return None
        try:
            answer = await self._transport.send("metrics", "GET", "/metrics", auth=False)
        except EvolutionError as exc:
            self._log.info("evolution.metrics_unreadable", error=exc.message)
            return None
        states = None
        if answer.status == 200 and not answer.looks_html():
            states = parse_metrics(answer.body.decode("utf-8", errors="replace"),
                                   self._samples.read)
            self._samples.turn()
        if states is None:
            if self._metrics_available is not False:
                self._log.info("evolution.metrics_unavailable", status=answer.status,
                               fallback="connectionState probes")
            self._metrics_available = False
            self._metrics_retry_at = now + self._probe_interval
            return None
        self._metrics_available = True
        return states

    async def _probe(self, name: str) -> LiveState:
        """One paced `connectionState`; anything but a clear answer is UNKNOWN, never "close"."""
        now = time.monotonic()
        slot = max(now, self._next_probe_slot)
        self._next_probe_slot = slot + 1.0 / self._probe_rps
        if slot > now:
            await anyio.sleep(slot - now)
        try:
            answer = await self._transport.send(
                "connectionState", "GET", instance_path("connectionState", name))
            if answer.status != 200:
                return LiveState.UNKNOWN
            return parse_connection_state(answer.json())
        except (EvolutionError, ValueError):
            return LiveState.UNKNOWN

    async def _live_from_probes(
        self, instances: tuple[ObservedInstance, ...], want: frozenset[str]
    ) -> dict[str, LiveState]:
        now = time.monotonic()
        prints = {i.name: fingerprint(i) for i in instances}
        self._bucket = refill(self._bucket, now, self._probe_rps, self._probe_capacity)
        chosen = choose_probes(prints, want, self._probes, self._previous, now,
                               self._probe_interval, math.floor(self._bucket.tokens))
        results: dict[str, LiveState] = {}

        async def probe(name: str) -> None:
            results[name] = await self._probe(name)

        async with anyio.create_task_group() as group:
            for name in chosen:
                group.start_soon(probe, name)
        self._bucket = Bucket(self._bucket.tokens - len(chosen), self._bucket.at)
        probes = {n: p for n, p in self._probes.items() if n in prints}
        probes.update({n: Probe(now, state, prints[n]) for n, state in results.items()})
        self._probes = probes
        self._previous = frozenset(prints)
        self._warn_if_overdue(want.intersection(prints), now)
        return {name: state_from_last_probe(probes.get(name), fp, now, self._probe_interval)
                for name, fp in prints.items()}

    def _warn_if_overdue(self, wanted: Set[str], now: float) -> None:
        """Say so when the budget cannot probe every wanted instance within the interval."""
        if self._probing_since is None:
            self._probing_since = now
        overdue = sum(
            1 for name in wanted
            if now - (self._probes[name].at if name in self._probes else self._probing_since)
            >= self._probe_interval)
        if overdue and now >= self._next_budget_warning:
            self._next_budget_warning = now + self._probe_interval
            self._log.warning(
                "evolution.probe_budget_short", overdue=overdue, wanted=len(wanted),
                hint="enable PROMETHEUS_METRICS on the server, or raise RECONCILER_PROBE_RPS")

    # --- writes --------------------------------------------------------------------------

