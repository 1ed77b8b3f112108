"""The control loop: one pass observes, plans and converges every server this replica leads.

A pass is `read desired -> read observed -> plan -> execute -> remember -> publish`, each stage
failing on its own (counted in `reconcile_errors_total{stage}`) without taking the loop down.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import anyio
import structlog

from reconciler import planner
from reconciler.events import EventPublisher, relay_outbox
from reconciler.evolution.client import EvolutionClient
from reconciler.executor import ExecutionReport, Executor
from reconciler.failpoints import reached
from reconciler.model import (
    DesiredState,
    DriftKind,
    LiveState,
    Mode,
    Outcome,
    Plan,
    Policy,
    ServerInventory,
    ServerRead,
    ServerReadError,
)
from reconciler.observability import Health, Metrics
from reconciler.planner.view import is_managed
from reconciler.settings import Settings
from reconciler.shutdown import Grace
from reconciler.store import LeaseToken, Store, StoreError

log = structlog.get_logger()

LEASE_TTL = 15.0
LEASE_RENEW_EVERY = 5.0


@dataclass
class PassResult:
    """What one pass saw and did: the CLI prints it, the loop exports it."""

    started_at: datetime
    servers: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    desired: DesiredState | None = None
    reads: tuple[ServerRead, ...] = ()
    plan: Plan | None = None
    report: ExecutionReport = field(default_factory=ExecutionReport)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    """(server, stage, message) for every failed stage."""
    duration: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.errors) or self.report.failed > 0

    @property
    def blocked(self) -> bool:
        """A blast-radius guard held a deletion or a missing mark back (exit code 3)."""
        return self.plan is not None and self.plan.blocked


def duplicate_client_names(reads: Sequence[ServerRead]) -> list[ServerRead]:
    """Two servers reporting one clientName would fight over the same sessions: act on neither."""
    by_client: dict[str, list[str]] = {}
    for read in reads:
        if isinstance(read, ServerInventory) and read.client_name:
            by_client.setdefault(read.client_name, []).append(read.server)
    clashing = {s: names for names in by_client.values() if len(names) > 1 for s in names}
    return [
        ServerReadError(
            server=read.server,
            stage="read_observed",
            error=f"servers {', '.join(sorted(clashing[read.server]))} report the same "
            f"clientName {read.client_name!r}: misconfiguration, neither is acted on",
            operator_error=True,
        )
        if read.server in clashing and isinstance(read, ServerInventory)
        else read
        for read in reads
    ]


def for_leader(plan: Plan, led: Collection[str], *, global_leader: bool) -> Plan:
    """The part of a plan this replica may carry out: actions and drift on the servers it leads;
    decisions that belong to no server (`missing`, a duplicate row nobody lists) go to the leader
    of the first server, so that exactly one replica makes them."""

    def ours(server: str) -> bool:
        return server in led if server else global_leader

    actions = tuple(a for a in plan.actions if ours(a.server))
    return replace(
        plan,
        drift=tuple(d for d in plan.drift if ours(d.server)),
        actions=actions,
        degraded_servers=frozenset(s for s in plan.degraded_servers if s in led),
    )


class Controller:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clients: Mapping[str, EvolutionClient],
        publisher: EventPublisher,
        metrics: Metrics,
        health: Health | None = None,
        holder: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.publisher = publisher
        self.metrics = metrics
        self.health = health or Health(settings.interval_seconds)
        self.holder = holder or f"reconciler-{uuid.uuid4().hex[:12]}"
        self.leases: dict[str, LeaseToken] = {}
        """The live leases, renewed in the background; a pass copies them when it starts."""
        self.pass_lock = anyio.Lock()
        self.grace = Grace()
        self.shutdown_seconds = settings.shutdown_seconds
        self._stop_deadline: float | None = None
        self.verify_timeout = 10.0
        """How long a pass waits for a deleted instance to leave the listing."""
        self.on_pass: Callable[[PassResult], None] | None = None
        """Called after every pass (the demo prints it)."""

    # --- leadership ---------------------------------------------------------------------------

    async def refresh_leases(self, *, take_over: bool = False) -> None:
        """Renew what we lead, take what nobody leads (or everything, with `take_over`: an
        operator's `once`); export `leader{server}`."""
        for server in self.clients:
            token = self.leases.get(server)
            try:
                if token is not None and await self.store.leases.renew(token, LEASE_TTL):
                    continue
                self.leases.pop(server, None)
                new = await self.store.leases.acquire(server, self.holder, LEASE_TTL,
                                                      take_over=take_over)
            except StoreError as exc:
                log.warning("lease refresh failed", server=server, error=str(exc))
                self.leases.pop(server, None)
                new = None
            if new is not None:
                if token is None or token.epoch != new.epoch:
                    log.info("leading server", server=server, epoch=new.epoch)
                self.leases[server] = new
            self.metrics.leader.labels(server=server).set(1 if server in self.leases else 0)

    @asynccontextmanager
    async def leading(self, *, take_over: bool = False) -> AsyncIterator[None]:
        """Hold (and keep renewing) the leases for as long as the block runs; release them after,
        so a standby or the daemon takes over at once instead of after the lease expires."""

        async def renew() -> None:
            while True:
                await anyio.sleep(LEASE_RENEW_EVERY)
                await self.refresh_leases()

        await self.refresh_leases(take_over=take_over)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(renew)
                yield
                tg.cancel_scope.cancel()
        finally:
            with anyio.move_on_after(self._release_budget(), shield=True):
                await self.release_leases()

    def _release_budget(self) -> float:
        """Releasing the leases lets a standby take over at once; while stopping, it gets what is
        left of the shutdown budget (the leases expire on their own anyway)."""
        if self._stop_deadline is None:
            return LEASE_TTL
        return max(0.1, self._stop_deadline - anyio.current_time())

    async def release_leases(self) -> None:
        for token in list(self.leases.values()):
            try:
                await self.store.leases.release(token)
            except StoreError as exc:
                log.warning("lease release failed", server=token.server, error=str(exc))
            self.metrics.leader.labels(server=token.server).set(0)
        self.leases.clear()

    # --- one pass -----------------------------------------------------------------------------

    def policy(self, *, allow_mass_deletion: bool, mode: Mode | None) -> Policy:
        return self.settings.policy(allow_mass_deletion=allow_mass_deletion, mode=mode)

    async def run_pass(
        self,
        *,
        allow_mass_deletion: bool = False,
        mode: Mode | None = None,
        record: bool = True,
    ) -> PassResult:
        async with self.pass_lock:
            return await self._run_pass(allow_mass_deletion, mode, record)

    async def _run_pass(self, allow_mass_deletion: bool, mode: Mode | None,
                        record: bool) -> PassResult:
        policy = self.policy(allow_mass_deletion=allow_mass_deletion, mode=mode)
        started = time.monotonic()
        now = datetime.now(UTC)
        tokens = dict(self.leases)
        """Fence every write of this pass: a lease lost or renewed under a new epoch ends it."""
        led = tuple(s for s in self.clients if s in tokens) if record else tuple(self.clients)
        result = PassResult(started_at=now, servers=led,
                            skipped=tuple(s for s in self.clients if s not in led))
        for server in result.skipped:
            self.metrics.reconcile_total.labels(server=server, result="skipped").inc()
        if not led:
            return result
        for server in led:
            self.metrics.last_attempt_timestamp_seconds.labels(server=server).set(time.time())
        try:
            result.desired = await self.store.desired.read()
            memory = await self.store.memory.load()
        except StoreError as exc:
            result.errors.extend((s, "read_desired", str(exc)) for s in led)
            return self._finish(result, started)

        want_live = {d.instance_name for d in result.desired.instances} | {
            m.instance_name for m in memory.instances.values() if m.orphan_streak > 0}
        # Every server is read, led or not: `missing` and the duplicates are judged across all
        # of them. Only the servers this replica leads are acted on.
        everyone = tuple(self.clients)
        reads: list[ServerRead] = [ServerReadError(s, "read_observed", "not read")
                                   for s in everyone]

        async def read_one(i: int, server: str) -> None:
            reads[i] = await self.clients[server].read(want_live=want_live)

        async with anyio.create_task_group() as tg:
            for i, server in enumerate(everyone):
                tg.start_soon(read_one, i, server)
        result.reads = tuple(duplicate_client_names(reads))
        for read in result.reads:
            if isinstance(read, ServerReadError):
                result.errors.append((read.server, read.stage, read.error))
                log.error("server read failed", server=read.server, error=read.error,
                          operator_must_fix=read.operator_error)

        full_plan = planner.plan(result.desired, result.reads, memory, policy, now)
        first = min(everyone)
        result.plan = for_leader(full_plan, led, global_leader=first in led)
        if not record:
            return self._finish(result, started)

        executor = Executor(self.store.desired, self.store.decisions, self.clients, self.metrics,
                            policy.mode, tokens, global_server=first, grace=self.grace,
                            verify_timeout=self.verify_timeout)
        try:
            await executor.execute(result.plan, now, result.report)
            new_memory = planner.record_outcomes(result.plan.memory,
                                                 result.report.delete_results, now)
            await reached("memory.save.before")
            await self.store.memory.save(new_memory, servers=led, leases=tokens)
            await reached("memory.save.after")
            done = set(memory.tombstones) - set(new_memory.tombstones)
            if done:
                await self.store.memory.retire_tombstones(done, leases=tokens.values())
        except StoreError as exc:
            result.errors.extend((s, "apply", str(exc)) for s in led)
            log.error("applying the plan failed", error=str(exc))
        for action, outcome, error in result.report.outcomes:
            if outcome is Outcome.FAILED:
                result.errors.append((action.server or led[0], "apply", error or "failed"))
        await self.publish_outbox(result)
        return self._finish(result, started)

    async def publish_outbox(self, result: PassResult | None = None) -> None:
        try:
            await reached("publish.before")
            await relay_outbox(self.store.outbox, self.publisher, self.metrics)
            await self.store.outbox.prune()
        except Exception as exc:  # Redis or the database: the outbox keeps the events
            log.warning("publishing events failed; they stay in the outbox", error=str(exc))
            if result is not None:
                result.errors.extend((s, "publish", str(exc)) for s in result.servers)

    def _finish(self, result: PassResult, started: float) -> PassResult:
        result.duration = time.monotonic() - started
        failed_servers = {server for server, _, _ in result.errors}
        for server, stage, _ in result.errors:
            if server in result.servers:
                self.metrics.reconcile_errors_total.labels(server=server, stage=stage).inc()
        self._export_state(result)
        for server in result.servers:
            self.metrics.reconcile_duration_seconds.labels(server=server).observe(result.duration)
            ok = server not in failed_servers
            self.metrics.reconcile_total.labels(
                server=server, result="success" if ok else "error").inc()
            if ok:
                self.metrics.last_success_timestamp_seconds.labels(server=server).set(time.time())
        if result.servers and not failed_servers & set(result.servers):
            self.health.ready = True
        self._log_summary(result)
        if self.on_pass is not None:
            self.on_pass(result)
        return result

    def _export_state(self, result: PassResult) -> None:
        if result.desired is not None:
            self.metrics.desired_instances.set(len(result.desired.instances))
            self.metrics.invalid_rows.set(result.desired.invalid_rows)
        if result.plan is None:
            return
        counts: dict[tuple[str, DriftKind], int] = {}
        for drift in result.plan.drift:
            key = (self.metrics.server_label(drift.server), drift.kind)
            counts[key] = counts.get(key, 0) + 1
        read_ok = {r.server for r in result.reads
                   if isinstance(r, ServerInventory) and r.server in result.servers}
        for server in read_ok:
            for kind in DriftKind:
                self.metrics.drift_instances.labels(server=server, kind=kind.value).set(
                    counts.get((server, kind), 0))
        for read in result.reads:
            if not isinstance(read, ServerInventory) or read.server not in result.servers:
                continue
            policy = self.settings.policy()
            by_state = dict.fromkeys(LiveState, 0)
            for inst in read.instances:
                if is_managed(policy, inst.name):
                    by_state[inst.live] += 1
            for state, n in by_state.items():
                self.metrics.observed_instances.labels(server=read.server, state=state.value).set(n)
        for server in result.servers:
            self.metrics.server_degraded.labels(server=server).set(
                1 if server in result.plan.degraded_servers else 0)

    def _log_summary(self, result: PassResult) -> None:
        counts: dict[str, int] = {}
        if result.plan is not None:
            for d in result.plan.drift:
                counts[d.kind.value] = counts.get(d.kind.value, 0) + 1
        outcomes: dict[str, int] = {}
        for action, outcome, _ in result.report.outcomes:
            key = f"{action.kind.value}:{outcome.value}"
            outcomes[key] = outcomes.get(key, 0) + 1
        log.info(
            "pass",
            servers=list(result.servers),
            skipped=list(result.skipped),
            desired=len(result.desired.instances) if result.desired else None,
            drift=counts,
            actions=outcomes,
            errors=[f"{s}/{stage}: {msg}" for s, stage, msg in result.errors],
            duration_ms=round(result.duration * 1000, 1),
        )

    # --- the daemon ---------------------------------------------------------------------------

    async def _pass_that_never_stops_the_loop(self) -> None:
        """A bug in one pass is logged and counted, and the next pass starts from fresh reads."""
        try:
            await self.run_pass()
        except Exception:
            log.exception("pass failed unexpectedly")
            for server in self.leases:
                self.metrics.reconcile_errors_total.labels(server=server, stage="apply").inc()
                self.metrics.reconcile_total.labels(server=server, result="error").inc()

    async def run_forever(self, stop: anyio.Event) -> None:
        """Passes on a jittered timer and at once on a tombstone NOTIFY, until `stop` is set;
        then out within `shutdown_seconds` (SPEC 7): the pass is cancelled, an action already
        sent to Evolution gets most of the budget to finish and be recorded, the leases the
        rest to be released."""
        wake = anyio.Event()
        current_pass = anyio.CancelScope()

        async def stopper() -> None:
            await stop.wait()
            self._stop_deadline = anyio.current_time() + self.shutdown_seconds * 0.9
            self.grace.begin(self.shutdown_seconds * 0.6)
            current_pass.cancel()

        async def tombstones() -> None:
            nonlocal wake
            while True:
                try:
                    async with self.store.memory.listen_tombstones() as names:
                        async for name in names:
                            log.info("integration deleted; reconciling now", instance=name)
                            wake.set()
                except StoreError as exc:
                    log.warning("tombstone listener failed; retrying", error=str(exc))
                    await anyio.sleep(LEASE_RENEW_EVERY)

        async with self.leading(), anyio.create_task_group() as tg:
            tg.start_soon(tombstones)
            tg.start_soon(stopper)
            while not stop.is_set():
                wake = anyio.Event()  # a NOTIFY during the pass triggers the next one at once
                self.health.tick()
                with current_pass:
                    await self._pass_that_never_stops_the_loop()
                current_pass = anyio.CancelScope()
                self.health.tick()
                interval = self.settings.interval_seconds * random.uniform(0.9, 1.1)
                with anyio.move_on_after(interval):
                    async with anyio.create_task_group() as waiters:
                        async def wait_for(event: anyio.Event) -> None:
                            await event.wait()
                            waiters.cancel_scope.cancel()
                        waiters.start_soon(wait_for, wake)
                        waiters.start_soon(wait_for, stop)
            tg.cancel_scope.cancel()
