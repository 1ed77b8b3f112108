"""One pass over every server this replica leads, shaped like external-dns's `RunOnce`.

`read desired -> read observed -> plan -> apply -> remember -> publish`: each stage is one call
that fails on its own (`reconcile_errors_total{stage}`) without taking the loop down. The loop
(`loop`), the leases (`leadership`) and every metric of a pass (`recorder`) live elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import structlog

from reconciler import planner
from reconciler.events import EventPublisher, relay_outbox
from reconciler.evolution.client import EvolutionClient
from reconciler.executor import ExecutionReport, Executor
from reconciler.failpoints import reached
from reconciler.leadership import Leadership
from reconciler.model import (
    DesiredState,
    Flag,
    Memory,
    Mode,
    Outcome,
    Plan,
    Policy,
    ServerInventory,
    ServerRead,
    ServerReadError,
    Stage,
)
from reconciler.recorder import PassRecorder, PassResult
from reconciler.settings import Settings
from reconciler.shutdown import Grace
from reconciler.store import LeaseToken, Store, StoreError

if TYPE_CHECKING:
    from reconciler.targeted import Targeted

log = structlog.get_logger()

SNAPSHOT_FRESH_INTERVALS = 2
"""SPEC 7: a snapshot older than two intervals is stale; what spans servers waits for it."""


@dataclass(frozen=True)
class PassOptions:
    allow_mass_deletion: bool = False
    """`once --allow-mass-deletion`: lift the blast-radius guards for this pass."""
    mode: Mode | None = None
    """Overrides `RECONCILER_MODE` (`once --dry-run`)."""
    plan_only: bool = False
    """`plan`: read and decide, take no lease, write and publish nothing."""


class Controller:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clients: Mapping[str, EvolutionClient],
        publisher: EventPublisher,
        leadership: Leadership,
        recorder: PassRecorder,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.publisher = publisher
        self.leadership = leadership
        self.recorder = recorder
        self.grace = Grace()
        self.pass_lock = anyio.Lock()
        self.verify_timeout = 10.0
        """How long a pass waits for a deleted instance to leave the listing."""
        self.apply_lock = anyio.Lock()
        """Held by a pass while it applies and remembers, and by each targeted reconcile."""
        self.population: planner.Population | None = None
        """What the last pass saw, for targeted reconciles (SPEC 4.5)."""
        self.deletions = DeletionWindow(settings.interval_seconds)
        self.touched: dict[tuple[str, str], int] = {}
        """(server, name) -> the generation a targeted reconcile last decided it in."""
        self.generation = 0
        self.targeted: Targeted | None = None
        """The work queue's intake and drains (`wiring` connects them)."""

    async def run_pass(self, options: PassOptions = PassOptions()) -> PassResult:
        async with self.pass_lock:
            policy = self.settings.policy(allow_mass_deletion=options.allow_mass_deletion,
                                          mode=options.mode)
            tokens = {} if options.plan_only else self.leadership.tokens()
            acting = tuple(self.clients) if options.plan_only else tuple(
                s for s in self.clients if s in tokens)
            result = PassResult(started_at=datetime.now(UTC), servers=acting,
                                skipped=tuple(s for s in self.clients if s not in acting))
            started = self.recorder.started(result)
            if not acting:
                return result
            await self._reconcile(result, policy, tokens, options.plan_only)
            return self.recorder.finished(result, started)

    async def _reconcile(self, result: PassResult, policy: Policy,
                         tokens: Mapping[str, LeaseToken], plan_only: bool) -> None:
        generation = self.generation
        read = await self._read(result)
        if read is None:
            return
        desired, memory = read
        population = self._plan(result, desired, memory, policy)
        if plan_only:
            return
        self.population = population
        try:
            async with self.apply_lock:
                decided = self._decided_since(result, generation)
                await self._apply(result, policy.mode, tokens)
                await self._remember(result, memory, tokens, decided)
        except StoreError as exc:
            result.fail(result.servers, Stage.APPLY, str(exc))
            log.error("applying the plan failed", error=str(exc))
        await self.publish_outbox(result)

    def _decided_since(self, result: PassResult, generation: int) -> set[tuple[str, str]]:
        """Instances a targeted reconcile decided while this pass read: it decided from fresher
        reads, so the pass leaves their actions and memory alone (one decision, one event id)."""
        decided = {k for k, g in self.touched.items() if g > generation}
        if decided and result.plan is not None:
            result.plan = replace(result.plan, actions=tuple(
                a for a in result.plan.actions if (a.server, a.instance_name) not in decided))
        self.touched = {k: g for k, g in self.touched.items() if g > generation}
        return decided

    async def _read_desired(self, result: PassResult) -> tuple[DesiredState, Memory] | None:
        try:
            result.desired = await self.store.desired.read()
            return result.desired, await self.store.memory.load()
        except StoreError as exc:
            result.fail(result.servers, Stage.READ_DESIRED, str(exc))
            return None

    async def _read(self, result: PassResult) -> tuple[DesiredState, Memory] | None:
        """Desired state and memory are read while the servers are: a pass costs the slowest
        of its reads, not their sum. Only live-state probes wait for the desired names (they
        probe those first). A failed database read stops the servers' reads: nothing is
        decided without the desired state."""
        read: tuple[DesiredState, Memory] | None = None
        desired_read = anyio.Event()

        async def want_live() -> set[str]:
            await desired_read.wait()
            if read is None:
                return set()
            desired, memory = read
            return {d.instance_name for d in desired.instances} | {
                m.instance_name for m in memory.instances.values() if m.orphan_streak > 0}

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_observed, result, want_live)
            read = await self._read_desired(result)
            desired_read.set()
            if read is None:
                tg.cancel_scope.cancel()
        return read

    async def _read_observed(self, result: PassResult,
                             want_live: Callable[[], Awaitable[Collection[str]]]) -> None:
        """The servers this replica leads are read from Evolution (once per interval, SPEC 7);
        every other server from the snapshot its leader keeps, so that `missing` and the
        duplicates are judged across all of them. A server with no fresh snapshot counts as
        unread: nothing that spans servers is decided, and nothing is deleted."""
        reads: dict[str, ServerRead] = {}

        async def read_one(server: str) -> None:
            reads[server] = await self.clients[server].read(want_live=want_live)

        async def read_snapshots() -> None:
            reads.update(await self._snapshots_of(
                [s for s in self.clients if s not in result.servers]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_snapshots)
            for server in result.servers:
                tg.start_soon(read_one, server)
        result.reads = tuple(refuse_shared_client_names([reads[s] for s in self.clients]))
        for failed in result.reads:
            if isinstance(failed, ServerReadError) and failed.server in result.servers:
                result.fail([failed.server], failed.stage, failed.error)
                log.error("server read failed", server=failed.server, error=failed.error,
                          operator_must_fix=failed.operator_error)

    async def _snapshots_of(self, servers: list[str]) -> dict[str, ServerRead]:
        if not servers:
            return {}
        max_age = SNAPSHOT_FRESH_INTERVALS * self.settings.interval_seconds
        try:
            fresh = await self.store.snapshots.fresh(servers, max_age)
        except StoreError as exc:
            fresh, why = {}, f"snapshots unreadable: {exc}"
        else:
            why = (f"no snapshot younger than {SNAPSHOT_FRESH_INTERVALS} intervals"
                   " (its leader has not read it)")
        missing = [s for s in servers if s not in fresh]
        if missing:
            log.warning("servers led elsewhere not seen", servers=missing, why=why)
        return {s: fresh.get(s) or ServerReadError(s, Stage.READ_OBSERVED, why)
                for s in servers}

    def _plan(self, result: PassResult, desired: DesiredState, memory: Memory,
              policy: Policy) -> planner.Population:
        everyone, population = planner.plan_and_population(
            desired, result.reads, memory, policy, result.started_at, self.population,
            read_now=result.servers, recent_deletions=self.deletions.counts(targeted_only=True))
        result.plan = for_leader(everyone, result.servers,
                                 fleet_leader=self.fleet_server in result.servers)
        return population

    async def _apply(self, result: PassResult, mode: Mode,
                     tokens: Mapping[str, LeaseToken]) -> None:
        assert result.plan is not None
        executor = Executor(self.store.desired, self.store.decisions, self.clients, mode, tokens,
                            fleet_server=self.fleet_server, grace=self.grace,
                            verify_timeout=self.verify_timeout)
        try:
            await executor.execute(result.plan, result.started_at, result.report)
        finally:
            self.deletions.add(result.report, targeted=False)
            for action, outcome, error in result.report.outcomes:
                if outcome is Outcome.FAILED:
                    result.fail([action.server or self.fleet_server], Stage.APPLY,
                                error or "failed")

    async def _remember(self, result: PassResult, memory: Memory,
                        tokens: Mapping[str, LeaseToken],
                        decided: Collection[tuple[str, str]]) -> None:
        assert result.plan is not None
        remembered = planner.record_outcomes(result.plan.memory, result.report.delete_results,
                                             result.started_at)
        await reached("memory.save.before")
        await self.store.memory.save(remembered, servers=result.servers, leases=tokens,
                                     fleet=self.fleet_server in result.servers, keep=decided,
                                     baseline=memory)
        await reached("memory.save.after")
        for read in result.reads:
            if isinstance(read, ServerInventory) and read.server in tokens:
                await self.store.snapshots.save(read, lease=tokens[read.server])
        retired = set(memory.tombstones) - set(remembered.tombstones)
        if retired:
            await self.store.memory.retire_tombstones(retired, leases=tokens.values())

    async def publish_outbox(self, result: PassResult | None = None) -> None:
        try:
            await reached("publish.before")
            await relay_outbox(self.store.outbox, self.publisher, self.recorder.metrics)
            await self.store.outbox.prune()
        except Exception as exc:  # Redis or the database: the outbox keeps the events
            log.warning("publishing events failed; they stay in the outbox", error=str(exc))
            if result is not None:
                result.fail(result.servers, Stage.PUBLISH, str(exc))

    @property
    def fleet_server(self) -> str:
        """The server whose leader takes the decisions that belong to no server (`missing`)."""
        return min(self.clients)


class DeletionWindow:
    """Deletions attempted per server over the last interval: the blast radius counts targeted
    and periodic deletions together over this sliding window (SPEC 4.5). A pass counts the
    targeted ones of the window with its own; a targeted reconcile counts them all."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._made: list[tuple[float, str, bool]] = []

    def add(self, report: ExecutionReport, *, targeted: bool) -> None:
        now = anyio.current_time()
        self._made.extend((now, action.server, targeted)
                          for action, _ in report.delete_results if not action.already_gone)

    def counts(self, *, targeted_only: bool = False) -> dict[str, int]:
        since = anyio.current_time() - self.seconds
        self._made = [m for m in self._made if m[0] > since]
        counts: dict[str, int] = {}
        for _, server, targeted in self._made:
            if targeted or not targeted_only:
                counts[server] = counts.get(server, 0) + 1
        return counts


def refuse_shared_client_names(reads: Sequence[ServerRead]) -> list[ServerRead]:
    """Two servers reporting one clientName would fight over the same sessions: act on neither."""
    by_client: dict[str, list[str]] = {}
    for read in reads:
        if isinstance(read, ServerInventory) and read.client_name:
            by_client.setdefault(read.client_name, []).append(read.server)
    clashing = {s: names for names in by_client.values() if len(names) > 1 for s in names}
    return [
        ServerReadError(
            server=read.server,
            stage=Stage.READ_OBSERVED,
            error=f"servers {', '.join(sorted(clashing[read.server]))} report the same "
            f"clientName {read.client_name!r}: misconfiguration, neither is acted on",
            operator_error=True,
        )
        if read.server in clashing and isinstance(read, ServerInventory)
        else read
        for read in reads
    ]


def for_leader(plan: Plan, led: Collection[str], *, fleet_leader: bool) -> Plan:
    """The part of a plan this replica may carry out: actions and drift on the servers it leads;
    decisions that belong to no server (`missing`) and every duplicate group (they span servers
    and rows) go to the leader of the first server, so that exactly one replica makes them."""

    def ours(server: str) -> bool:
        return server in led if server else fleet_leader

    return replace(
        plan,
        drift=tuple(d for d in plan.drift if ours(d.server)),
        actions=tuple(a for a in plan.actions
                      if (fleet_leader if isinstance(a, Flag) else ours(a.server))),
        degraded_servers=frozenset(s for s in plan.degraded_servers if s in led),
    )
