"""Applies a plan: the only module that changes anything outside the daemon's own schema.

It does exactly what the plan says, plus the one check that needs I/O: the point re-check of the
database right before a delete (SPEC 4.3 rule 5). Every action leaves an audit row; every change
leaves its event in the outbox in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import anyio
import structlog

from reconciler.events import build_event
from reconciler.evolution.client import EvolutionClient
from reconciler.evolution.errors import EvolutionError
from reconciler.model import (
    Action,
    ActionKind,
    DeleteResult,
    Guard,
    Mode,
    Outcome,
    Plan,
)
from reconciler.observability import METERED_ACTIONS, Metrics
from reconciler.store import LeaseToken, Store

log = structlog.get_logger()


@dataclass
class ExecutionReport:
    outcomes: list[tuple[Action, Outcome, str | None]] = field(default_factory=list)
    delete_results: list[tuple[Action, DeleteResult]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for _, outcome, _ in self.outcomes if outcome is Outcome.FAILED)

    @property
    def failed_servers(self) -> set[str]:
        return {a.server for a, outcome, _ in self.outcomes if outcome is Outcome.FAILED}


@dataclass(frozen=True)
class Executor:
    store: Store
    clients: Mapping[str, EvolutionClient]
    metrics: Metrics
    mode: Mode
    leases: Mapping[str, LeaseToken] = field(default_factory=dict)
    verify_timeout: float = 10.0
    verify_poll: float = 0.5

    async def execute(self, plan: Plan, now: datetime) -> ExecutionReport:
        report = ExecutionReport()
        deletes: dict[str, list[Action]] = {}
        held = [(a, o) for a in plan.actions if (o := self._held(a)) is not None]
        await self.store.record_many([(a, o, self._lease(a.server)) for a, o in held])
        for action, outcome in held:
            self._done(report, action, outcome, None)
        for action in plan.actions:
            if self._held(action) is not None:
                continue
            if action.kind is ActionKind.DELETE:
                deletes.setdefault(action.server, []).append(action)
            elif action.kind is ActionKind.FLAG:
                await self._audit(report, action, Outcome.OK, event=self._event(action, now))
            else:
                await self._update_status(report, action, now)
        for server, actions in deletes.items():
            await self._delete_all(report, server, actions, now)
        return report

    def _held(self, action: Action) -> Outcome | None:
        """Audited only: blocked by a guard, or planned in dry run."""
        if action.blocked_by is not None:
            return Outcome.BLOCKED
        return Outcome.DRY_RUN if self.mode is Mode.DRY_RUN else None

    def _lease(self, server: str) -> LeaseToken | None:
        return self.leases.get(server) or next(iter(self.leases.values()), None)

    def _event(self, action: Action, now: datetime) -> dict[str, object] | None:
        if action.event is None:
            return None
        return build_event(
            action.event,
            instance_name=action.instance_name,
            organization_id=action.organization_id,
            server=action.server,
            reason=action.reason,
            occurred_at=now,
        )

    def _count(self, action: Action, outcome: Outcome) -> None:
        server = self.metrics.server_label(action.server)
        if action.kind in METERED_ACTIONS:
            self.metrics.actions_total.labels(
                server=server, action=action.kind.value, outcome=outcome.value
            ).inc()
        if outcome is Outcome.BLOCKED and action.blocked_by is not None:
            self.metrics.guard_blocked_total.labels(
                server=server, guard=action.blocked_by.value
            ).inc()

    async def _audit(
        self,
        report: ExecutionReport,
        action: Action,
        outcome: Outcome,
        *,
        error: str | None = None,
        event: dict[str, object] | None = None,
    ) -> None:
        await self.store.record(
            action, outcome, error=error, event=event, lease=self._lease(action.server)
        )
        self._done(report, action, outcome, error)

    def _done(self, report: ExecutionReport, action: Action, outcome: Outcome,
              error: str | None) -> None:
        self._count(action, outcome)
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

    async def _update_status(self, report: ExecutionReport, action: Action, now: datetime) -> None:
        changed = await self.store.update_status(
            action, event=self._event(action, now), lease=self._lease(action.server)
        )
        if not changed:
            log.info(
                "status changed by the application since it was read; next pass decides",
                instance=action.instance_name,
                expected=action.expected_status,
            )
            return
        self._count(action, Outcome.OK)
        report.outcomes.append((action, Outcome.OK, None))
        log.info("action", action=action.kind.value, server=action.server,
                 instance=action.instance_name, reason=action.reason, outcome="ok")

    async def _delete_all(
        self, report: ExecutionReport, server: str, actions: Sequence[Action], now: datetime
    ) -> None:
        client = self.clients[server]
        requested: list[Action] = []
        for action in actions:
            if action.already_gone:
                await self._audit(report, action, Outcome.OK, event=self._event(action, now))
                report.delete_results.append((action, DeleteResult.VERIFIED))
                continue
            if await self.store.row_names_instance(action.instance_name,
                                                   lease=self._lease(server)):
                await self._audit(report, replace(action, blocked_by=Guard.RECHECK),
                                  Outcome.BLOCKED)
                continue
            try:
                await self._logout_and_delete(client, action)
            except EvolutionError as exc:
                await self._audit(report, action, Outcome.FAILED, error=str(exc))
                report.delete_results.append((action, DeleteResult.FAILED))
                continue
            requested.append(action)
        if not requested:
            return
        still_listed = await self._wait_until_absent(client, {a.instance_name for a in requested})
        for action in requested:
            if action.instance_name in still_listed:
                await self._audit(report, action, Outcome.FAILED,
                                  error="deletion answered but not verified yet")
                report.delete_results.append((action, DeleteResult.UNVERIFIED))
            else:
                await self._audit(report, action, Outcome.OK, event=self._event(action, now))
                report.delete_results.append((action, DeleteResult.VERIFIED))

    async def _logout_and_delete(self, client: EvolutionClient, action: Action) -> None:
        """Log a live instance out first (frees the phone's device slot); servers that refuse to
        delete an open instance (v1 <= 1.8.3, 2.2.0) get the logout they asked for, once."""
        if action.logout_first:
            await client.logout(action.instance_name)
        try:
            await client.delete(action.instance_name)
        except EvolutionError as exc:
            if not exc.needs_logout or action.logout_first:
                raise
            await client.logout(action.instance_name)
            await client.delete(action.instance_name)

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
