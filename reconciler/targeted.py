"""Hints in, targeted reconciles out (SPEC 4.5): the work queue's intake and its drains.

Every hint is offered without waiting (the webhook receiver answers at once); the intake sends
a hint for a server another replica leads to that leader through PostgreSQL, and queues the
rest. One drain per server takes entries at `RECONCILER_HINT_RPS` and reconciles each instance
alone: a point read of its rows and memory, the filtered read of its server, then plan() over
that restricted view with the fleet's counts from the last pass (`planner.scope`), carried out
by the same executor as a pass, under the same lease. Without a pass yet there are no counts to
decide with: the hint wakes a pass instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import structlog

from reconciler import planner
from reconciler.controller import Controller, for_leader
from reconciler.executor import ExecutionReport, Executor
from reconciler.hints import Entry, Hint, WorkQueue
from reconciler.model import Outcome, ServerInventory
from reconciler.store import StoreError

log = structlog.get_logger()

_INTAKE_BUFFER = 10_000
"""Hints waiting for the intake; beyond, they are dropped (passes still converge)."""


class Targeted:
    def __init__(self, controller: Controller, rps: float) -> None:
        self.controller = controller
        metrics = controller.recorder.metrics
        self.queue = WorkQueue(rps, on_depth=metrics.queue_depth.set)
        self.wake_pass = anyio.Event()
        """Set when a hint needs a pass (none has run yet); the loop replaces it."""
        self._send, self._receive = anyio.create_memory_object_stream[Hint](_INTAKE_BUFFER)

    def offer(self, hint: Hint) -> bool:
        """Never waits: False when the intake is full (the hint is dropped)."""
        try:
            self._send.send_nowait(hint)
        except anyio.WouldBlock:
            return False
        return True

    async def serve(self) -> None:
        """The intake and one drain per server, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._intake)
            for server in self.controller.clients:
                tg.start_soon(self._drain, server)

    async def _intake(self) -> None:
        async for hint in self._receive:
            try:
                await self._route(hint)
            except StoreError as exc:
                log.warning("passing a hint on failed; the passes converge it",
                            error=str(exc), instance=hint.name)

    async def _route(self, hint: Hint) -> None:
        controller = self.controller
        if hint.server and hint.server not in controller.clients:
            return
        led = controller.leadership.tokens()
        if hint.server:
            servers: tuple[str, ...] = (hint.server,)
        elif controller.population is not None:
            servers = controller.population.servers_listing(hint.name) or tuple(
                controller.clients)
        else:
            servers = tuple(controller.clients)
        for server in servers:
            if server in led:
                controller.recorder.metrics.hints_total.labels(source=hint.source).inc()
                self.queue.put(server, hint.name, hint.source)
            elif hint.server and not hint.passed_on:
                await controller.store.memory.pass_hint(replace(hint, passed_on=True))
            # a trigger's hint reached every replica: the leader has it too

    async def _drain(self, server: str) -> None:
        while True:
            entry = await self.queue.take(server)
            try:
                ok = await self.reconcile(entry)
            except Exception:
                log.exception("targeted reconcile failed unexpectedly", server=server,
                              instance=entry.name)
                ok = False
            if ok is None:
                self.queue.drop(entry)
            else:
                self.queue.done(entry, ok=ok)

    async def reconcile(self, entry: Entry) -> bool | None:
        """One instance, decided as a pass would. None: not ours to decide (no lease)."""
        controller = self.controller
        token = controller.leadership.tokens().get(entry.server)
        if token is None:
            return None
        population = controller.population
        if population is None:
            self.wake_pass.set()
            return True
        name, server = entry.name, entry.server
        policy = controller.settings.policy()
        names = frozenset({name})
        try:
            async with controller.apply_lock:
                rows = await controller.store.desired.read_naming(name)
                memory = await controller.store.memory.load_for(names)
                fresh = await controller.clients[server].read_instance(name)
                if not isinstance(fresh, ServerInventory):
                    log.info("targeted read failed; retried with backoff", server=server,
                             instance=name, error=getattr(fresh, "error", None))
                    return False
                now = datetime.now(UTC)
                inputs = planner.restricted(population, names, [fresh], rows, memory)
                scope = planner.Scope(names, population,
                                      timedelta(seconds=controller.settings.interval_seconds))
                recent = controller.deletions.counts()
                plan = for_leader(
                    planner.plan(*inputs, policy, now, scope=scope, recent_deletions=recent),
                    {server}, fleet_leader=False)
                report = ExecutionReport()
                executor = Executor(controller.store.desired, controller.store.decisions,
                                    controller.clients, policy.mode, {server: token},
                                    fleet_server=controller.fleet_server,
                                    grace=controller.grace,
                                    verify_timeout=controller.verify_timeout)
                try:
                    await executor.execute(plan, now, report)
                finally:
                    controller.deletions.add(report, targeted=True)
                    controller.recorder.count_actions(report)
                remembered = planner.record_outcomes(plan.memory, report.delete_results, now)
                entries = [m for k, m in remembered.instances.items() if k == (server, name)]
                await controller.store.memory.save_instances(entries, lease=token)
                controller.generation += 1
                controller.touched[(server, name)] = controller.generation
                controller.population = planner.updated(population, names, inputs[0], inputs[1],
                                                        policy, now)
        except StoreError as exc:
            log.warning("targeted reconcile failed; retried with backoff", server=server,
                        instance=name, error=str(exc))
            return False
        with contextlib.suppress(Exception):
            await controller.publish_outbox()
        failed = any(o is Outcome.FAILED for _, o, _ in report.outcomes)
        if not failed:
            controller.recorder.metrics.hint_to_converged_seconds.observe(
                anyio.current_time() - entry.first_at)
        return not failed
