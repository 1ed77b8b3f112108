"""Every metric and the summary log of a pass, in one place (SPEC 6).

The pass only collects what happened in a `PassResult`; this module turns it into the
`reconcile_*`, `drift_instances`, `observed_instances`, `actions_total`, `guard_blocked_total`
and `server_degraded` series, readiness, and one `pass` log line. (Requests to Evolution are
counted by the client, events published by the outbox relay, leadership by `leadership`.)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from reconciler.executor import ExecutionReport
from reconciler.model import (
    DesiredState,
    DriftKind,
    LiveState,
    Memory,
    Outcome,
    Plan,
    Policy,
    ServerInventory,
    ServerRead,
    Stage,
)
from reconciler.observability import METERED_ACTIONS, Health, Metrics
from reconciler.planner.view import is_managed

log = structlog.get_logger()


@dataclass(frozen=True)
class StageError:
    server: str
    stage: Stage
    message: str


@dataclass
class PassResult:
    """What one pass saw and did: the CLI prints it, the recorder exports it."""

    started_at: datetime
    servers: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    desired: DesiredState | None = None
    reads: tuple[ServerRead, ...] = ()
    plan: Plan | None = None
    report: ExecutionReport = field(default_factory=ExecutionReport)
    errors: list[StageError] = field(default_factory=list)
    duration: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.errors) or self.report.failed > 0

    @property
    def blocked(self) -> bool:
        """A blast-radius guard held a deletion or a missing mark back (exit code 3)."""
        return self.plan is not None and self.plan.blocked

    def fail(self, servers: Iterable[str], stage: Stage, message: str) -> None:
        self.errors.extend(StageError(s, stage, message) for s in servers)


class PassRecorder:
    def __init__(self, metrics: Metrics, health: Health, policy: Policy) -> None:
        self.metrics = metrics
        self.health = health
        self.policy = policy
        """Only for what is managed: the observed counts use the planner's own rule."""
        self.on_pass: Callable[[PassResult], None] | None = None
        """Called after every pass (the demo prints it)."""
        self.last: PassResult | None = None
        """The last finished pass, without the instances it read and remembered (the next pass
        would hold two fleets): the status page shows it without asking any server."""

    def started(self, result: PassResult) -> float:
        for server in result.skipped:
            self.metrics.reconcile_total.labels(server=server, result="skipped").inc()
        for server in result.servers:
            self.metrics.last_attempt_timestamp_seconds.labels(server=server).set(time.time())
        return time.monotonic()

    def finished(self, result: PassResult, started: float) -> PassResult:
        result.duration = time.monotonic() - started
        for error in result.errors:
            if error.server in result.servers:
                self.metrics.reconcile_errors_total.labels(
                    server=error.server, stage=error.stage.value).inc()
        self.count_actions(result.report)
        self._export_state(result)
        failed_servers = {e.server for e in result.errors}
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
        self.last = _summary(result)
        if self.on_pass is not None:
            self.on_pass(result)
        return result

    def crashed(self, servers: Iterable[str]) -> None:
        """A bug ended the pass: counted as an apply error, so the error-ratio alert sees it."""
        for server in servers:
            self.metrics.reconcile_errors_total.labels(server=server,
                                                       stage=Stage.APPLY.value).inc()
            self.metrics.reconcile_total.labels(server=server, result="error").inc()

    def count_actions(self, report: ExecutionReport) -> None:
        for action, outcome, _ in report.outcomes:
            server = self.metrics.server_label(action.server)
            if action.kind in METERED_ACTIONS:
                self.metrics.actions_total.labels(
                    server=server, action=action.kind.value, outcome=outcome.value).inc()
            if outcome is Outcome.BLOCKED and action.blocked_by is not None:
                self.metrics.guard_blocked_total.labels(
                    server=server, guard=action.blocked_by.value).inc()

    def _export_state(self, result: PassResult) -> None:
        if result.desired is not None:
            self.metrics.desired_instances.set(len(result.desired.instances))
            self.metrics.invalid_rows.set(result.desired.invalid_rows)
        if result.plan is None:
            return
        drift = Counter((self.metrics.server_label(d.server), d.kind) for d in result.plan.drift)
        for read in result.reads:
            if not isinstance(read, ServerInventory) or read.server not in result.servers:
                continue
            for kind in DriftKind:
                self.metrics.drift_instances.labels(server=read.server, kind=kind.value).set(
                    drift[(read.server, kind)])
            by_state = Counter(i.live for i in read.instances if is_managed(self.policy, i.name))
            for state in LiveState:
                self.metrics.observed_instances.labels(
                    server=read.server, state=state.value).set(by_state[state])
        for server in result.servers:
            self.metrics.server_degraded.labels(server=server).set(
                1 if server in result.plan.degraded_servers else 0)

    def _log_summary(self, result: PassResult) -> None:
        drift = Counter(d.kind.value for d in (result.plan.drift if result.plan else ()))
        actions = Counter(f"{a.kind.value}:{o.value}" for a, o, _ in result.report.outcomes)
        log.info(
            "pass",
            servers=list(result.servers),
            skipped=list(result.skipped),
            desired=len(result.desired.instances) if result.desired else None,
            drift=dict(drift),
            actions=dict(actions),
            errors=[f"{e.server}/{e.stage.value}: {e.message}" for e in result.errors],
            duration_ms=round(result.duration * 1000, 1),
        )


def _summary(result: PassResult) -> PassResult:
    reads = tuple(replace(r, instances=()) if isinstance(r, ServerInventory) else r
                  for r in result.reads)
    plan = replace(result.plan, memory=Memory()) if result.plan is not None else None
    return replace(result, desired=None, reads=reads, plan=plan)
