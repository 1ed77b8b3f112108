"""Applies a plan: the only module that changes anything outside the daemon's own schema.

It does exactly what the plan says, plus the one check that needs I/O: the point re-check of the
database right before a delete (SPEC 4.3 rule 5). Every action leaves an audit row; every change
leaves its event in the outbox in the same transaction.

Every write and the decision to call Evolution are fenced by the lease token the pass started
with, for the server the action belongs to: once one is refused (`LeaseLost`), the pass writes and
calls nothing more. A delete commits its intent and event id before its first call, and confirms
the removal, publishes its event and forgets the intent in one transaction, so a removal has one
`event_id` whatever happens in between (SPEC 5).

The deletions of one server run together, as many at once as its client has requests in flight,
each one's steps in order. The first that fails (a refused lease check) cancels the others, their
calls in flight too: a call already sent keeps its committed intent, which the next leader
verifies. On a stop, calls already sent get their grace and no new one starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial

import anyio
import structlog
from anyio.abc import TaskGroup

from reconciler.events import build_event
from reconciler.evolution.client import EvolutionClient
from reconciler.evolution.errors import EvolutionError, NeedsLogout
from reconciler.failpoints import reached
from reconciler.model import (
    Action,
    Delete,
    DeleteResult,
    Event,
    Flag,
    Guard,
    InstanceMemory,
    Mode,
    Outcome,
    Plan,
    StatusChange,
)
from reconciler.planner.outcomes import after_attempt, intent_to_delete
from reconciler.shutdown import Grace
from reconciler.store import DecisionLog, DesiredSource, LeaseToken

log = structlog.get_logger()


@dataclass
class ExecutionReport:
    outcomes: list[tuple[Action, Outcome, str | None]] = field(default_factory=list)
    delete_results: list[tuple[Delete, DeleteResult]] = field(default_factory=list)
    """Each attempted delete, with the event id it was decided under."""

    @property
    def failed(self) -> int:
        return sum(1 for _, outcome, _ in self.outcomes if outcome is Outcome.FAILED)

    @property
    def failed_servers(self) -> set[str]:
        return {a.server for a, outcome, _ in self.outcomes if outcome is Outcome.FAILED}


@dataclass(frozen=True)
class Executor:
    desired: DesiredSource
    decisions: DecisionLog
    clients: Mapping[str, EvolutionClient]
    mode: Mode
    leases: Mapping[str, LeaseToken]
    """The tokens the pass started with, by server; never the live, renewed ones."""
    fleet_server: str
    """The server whose leader takes the decisions that belong to no server (`missing`)."""
    grace: Grace = field(default_factory=Grace)
    verify_timeout: float = 10.0
    verify_poll: float = 0.5

    async def execute(self, plan: Plan, now: datetime, report: ExecutionReport) -> None:
        """Fill `report` as actions are done, so that it holds what happened even when a lost
        lease ends the pass midway."""
        deletes: dict[str, list[Delete]] = {}
        audited = [(a, o) for a in plan.actions if (o := self._audit_only(a)) is not None]
        await self.decisions.record_many([(a, o, self._lease_of(a)) for a, o in audited])
        for action, outcome in audited:
            self._report(report, action, outcome, None)
        for action in plan.actions:
            if self._audit_only(action) is not None:
                continue
            match action:
                case Delete():
                    deletes.setdefault(action.server, []).append(action)
                case Flag():
                    await self._flag(report, action, now)
                case StatusChange():
                    await self._update_status(report, action, now)
        for server, actions in deletes.items():
            await self._delete_all(report, server, actions, plan, now)

    def _audit_only(self, action: Action) -> Outcome | None:
        """Audited only: blocked by a guard, or planned in dry run."""
        if action.blocked_by is not None:
            return Outcome.BLOCKED
        return Outcome.DRY_RUN if self.mode is Mode.DRY_RUN else None

    def _lease(self, server: str) -> LeaseToken:
        return self.leases[server or self.fleet_server]

    def _lease_of(self, action: Action) -> LeaseToken:
        """Duplicate groups span servers and are the first server's leader's to report."""
        return self.leases[self.fleet_server] if isinstance(action, Flag) else self._lease(
            action.server)

    def _event(self, action: Action, now: datetime) -> Event:
        return build_event(
            action.event,
            instance_name=action.instance_name,
            organization_id=action.organization_id,
            server=action.server,
            reason=action.reason,
            occurred_at=now,
            event_id=action.event_id if isinstance(action, Delete) else None,
        )

    def _report(self, report: ExecutionReport, action: Action, outcome: Outcome,
              error: str | None) -> None:
        report.outcomes.append((action, outcome, error))
        log.info(
            "action",
            action=action.kind.value,
            server=action.server,
            instance=action.instance_name,
            reason=action.reason,
            outcome=outcome.value,
            guard=action.blocked_by.value if action.blocked_by else None,
            error=error,
        )

    async def _flag(self, report: ExecutionReport, action: Flag, now: datetime) -> None:
        event = self._event(action, now)
        await reached("flag.before")
        if await self.decisions.record_flag(action, event, lease=self._lease_of(action)):
            self._report(report, action, Outcome.OK, None)
        await reached("flag.after")

    async def _update_status(self, report: ExecutionReport, action: StatusChange,
                             now: datetime) -> None:
        await reached("mark.before")
        changed = await self.decisions.update_status(
            action, event=self._event(action, now), lease=self._lease(action.server)
        )
        await reached("mark.after")
        if not changed:
            log.info(
                "status changed by the application since it was read; next pass decides",
                instance=action.instance_name,
                expected=action.expected_status,
            )
            return
        self._report(report, action, Outcome.OK, None)

    async def _delete_all(
        self, report: ExecutionReport, server: str, actions: Sequence[Delete], plan: Plan,
        now: datetime,
    ) -> None:
        """The deletions of one server, as many at once as its client has requests in flight,
        each one's steps in order; then one verification listing for them all."""
        client = self.clients[server]
        for action in actions:
            if action.already_gone:
                await self._confirm(report, action, now)
        requested: dict[int, tuple[Delete, InstanceMemory]] = {}
        batch = _Batch(client.max_concurrency)

        async def delete_one(index: int, action: Delete) -> None:
            answered = await self._request(report, client, batch, action, plan, now)
            if answered is not None:
                requested[index] = answered

        await batch.run([partial(delete_one, i, a)
                         for i, a in enumerate(actions) if not a.already_gone])
        if batch.ended or not requested:
            return  # cut short by a stop: the intents are committed, the next leader verifies
        done = [requested[i] for i in sorted(requested)]
        await reached("delete.verify.before")
        await self.decisions.check_lease(self._lease(server))
        still_listed = await self._wait_until_absent(client, {a.instance_name for a, _ in done})
        for action, intent in done:
            if action.instance_name in still_listed:
                await self._failed(report, action, intent, DeleteResult.UNVERIFIED,
                                   "deletion answered but not verified yet", now)
            else:
                await self._confirm(report, action, now)

    async def _request(
        self, report: ExecutionReport, client: EvolutionClient, batch: _Batch, action: Delete,
        plan: Plan, now: datetime,
    ) -> tuple[Delete, InstanceMemory] | None:
        """One deletion up to its answer: the point re-check, the intent committed, the calls.
        The delete under its event id and its intent, if Evolution answered that it deletes;
        None if blocked, failed or cut short."""
        lease = self._lease(action.server)
        if await self.desired.row_names_instance(action.instance_name, lease=lease):
            blocked = replace(action, blocked_by=Guard.RECHECK)
            await self.decisions.record(blocked, Outcome.BLOCKED, lease=lease)
            self._report(report, blocked, Outcome.BLOCKED, None)
            return None
        action = replace(action, event_id=action.event_id or uuid.uuid4())
        assert action.event_id is not None
        known = plan.memory.instances.get((action.server, action.instance_name))
        intent = intent_to_delete(known, action, action.event_id, now)
        await reached("delete.intent.before")
        await self.decisions.begin_delete(intent, lease=lease)
        await reached("delete.intent.after")
        if self.grace.stopping:
            batch.end()  # no call starts once stopping
            return None
        with self.grace.shielded() as section, batch.fenced():
            try:
                await self._logout_and_delete(client, action)
            except EvolutionError as exc:
                await self._failed(report, action, intent, DeleteResult.FAILED, str(exc), now)
            else:
                return action, intent
        if section.cancel_called:
            batch.end()
        return None

    async def _confirm(self, report: ExecutionReport, action: Delete, now: datetime) -> None:
        event = self._event(action, now)
        await reached("delete.confirm.before")
        if await self.decisions.confirm_removal(action, event, lease=self._lease(action.server)):
            self._report(report, action, Outcome.OK, None)
        else:
            log.info("removal already confirmed", server=action.server,
                     instance=action.instance_name)
        await reached("delete.confirm.after")
        report.delete_results.append((action, DeleteResult.VERIFIED))

    async def _failed(self, report: ExecutionReport, action: Delete, intent: InstanceMemory,
                      result: DeleteResult, error: str, now: datetime) -> None:
        entry = after_attempt(intent, action, result, now)
        assert entry is not None, "only a verified removal is forgotten"
        await self.decisions.record_delete_failure(action, entry, error,
                                               lease=self._lease(action.server))
        self._report(report, action, Outcome.FAILED, error)
        report.delete_results.append((action, result))

    async def _logout_and_delete(self, client: EvolutionClient, action: Delete) -> None:
        """Log a live instance out first (frees the phone's device slot); servers that refuse to
        delete an open instance (v1 <= 1.8.3, 2.2.0) get the logout they asked for, once."""
        if action.logout_first:
            await self._logout(client, action)
        try:
            await self._delete(client, action)
        except NeedsLogout:
            if action.logout_first:
                raise
            await self._logout(client, action)
            await self._delete(client, action)

    async def _logout(self, client: EvolutionClient, action: Delete) -> None:
        await reached("delete.logout.before")
        await self.decisions.check_lease(self._lease(action.server))
        await client.logout(action.instance_name)
        await reached("delete.logout.after")

    async def _delete(self, client: EvolutionClient, action: Delete) -> None:
        await reached("delete.call.before")
        await self.decisions.check_lease(self._lease(action.server))
        await client.delete(action.instance_name)
        await reached("delete.call.after")

    async def _wait_until_absent(self, client: EvolutionClient, names: set[str]) -> set[str]:
        """Names still listed after the verification window (Evolution deletes asynchronously)."""
        remaining = set(names)
        with anyio.move_on_after(self.verify_timeout):
            while remaining:
                try:
                    remaining &= await client.list_names()
                except EvolutionError as exc:
                    log.warning("verification listing failed", error=str(exc))
                if remaining:
                    await anyio.sleep(self.verify_poll)
        return remaining


class _Batch:
    """Deletions in flight together, at most `limit` at once, started in order. The first to
    fail ends them all, their calls in flight too (a call already sent keeps its committed
    intent, which the next leader verifies), and `run` raises its error: after a lost lease,
    nothing more is called or written."""

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._group: TaskGroup | None = None
        self._fences: set[anyio.CancelScope] = set()
        self._error: Exception | None = None
        self.ended = False

    async def run(self, deletions: Sequence[Callable[[], Awaitable[None]]]) -> None:
        queue = iter(deletions)

        async def worker() -> None:
            for deletion in queue:
                if self.ended:
                    return
                try:
                    await deletion()
                except Exception as exc:
                    self.end(exc)

        async with anyio.create_task_group() as group:
            self._group = group
            for _ in range(min(self._limit, len(deletions))):
                group.start_soon(worker)
        if self._error is not None:
            raise self._error

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """A section that ending the batch cancels, even inside a `Grace` shield."""
        with anyio.CancelScope() as scope:
            self._fences.add(scope)
            try:
                yield
            finally:
                self._fences.discard(scope)

    def end(self, error: Exception | None = None) -> None:
        """No deletion starts after this; with `error`, those in flight are cancelled."""
        self.ended = True
        if error is None:
            return
        if self._error is None:
            self._error = error
        for scope in self._fences:
            scope.cancel()
        if self._group is not None:
            self._group.cancel_scope.cancel()
