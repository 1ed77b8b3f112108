"""Every metric of SPEC section 6, the HTTP endpoints, and logging setup.

Metrics live in their own registry so that tests and several daemons in one process never clash,
and every series that can exist is created up front (zero until something happens), so that alert
rules see a value from the first scrape.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from reconciler import __version__
from reconciler.model import (
    ActionKind,
    DriftKind,
    EventType,
    Guard,
    LiveState,
    Outcome,
    Stage,
)

PREFIX = "evolution_reconciler_"
STAGES = tuple(s.value for s in Stage)
RESULTS = ("success", "error", "skipped")
METERED_ACTIONS = (
    ActionKind.DELETE,
    ActionKind.MARK_DISCONNECTED,
    ActionKind.MARK_CONNECTED,
    ActionKind.MARK_MISSING,
)


HINT_SOURCES = ("tombstone", "row", "webhook")
WEBHOOK_EVENTS = ("connection.update", "status.instance", "logout.instance", "remove.instance",
                  "instance.delete", "instance.create")
"""The events that become hints (SPEC 4.6); every other one is `ignored` as `other`."""
OTHER_EVENT = "other"
WEBHOOK_RESULTS = ("accepted", "ignored", "unauthorized", "invalid")
NO_SERVER = ""
"""The `server` label of a webhook for no configured server (never the raw path segment)."""


class Metrics:
    """The daemon's metrics, pre-populated for the configured servers."""

    def __init__(self, servers: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        self.drift_instances = Gauge(
            p + "drift_instances", "Instances in each drift kind at the end of the last pass",
            ["server", "kind"], registry=r)
        self.observed_instances = Gauge(
            p + "observed_instances", "Managed instances by live state", ["server", "state"],
            registry=r)
        self.desired_instances = Gauge(
            p + "desired_instances", "Desired rows read in the last pass", registry=r)
        self.invalid_rows = Gauge(
            p + "invalid_rows", "Desired rows that could not be used", registry=r)
        self.reconcile_total = Counter(
            p + "reconcile", "Passes by result", ["server", "result"], registry=r)
        self.reconcile_errors_total = Counter(
            p + "reconcile_errors", "Failed passes by stage", ["server", "stage"], registry=r)
        self.reconcile_duration_seconds = Histogram(
            p + "reconcile_duration_seconds", "Wall time of a pass", ["server"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.last_attempt_timestamp_seconds = Gauge(
            p + "last_attempt_timestamp_seconds", "Unix time of the last pass started",
            ["server"], registry=r)
        self.last_success_timestamp_seconds = Gauge(
            p + "last_success_timestamp_seconds", "Unix time of the last successful pass",
            ["server"], registry=r)
        self.actions_total = Counter(
            p + "actions", "Actions by kind and outcome", ["server", "action", "outcome"],
            registry=r)
        self.guard_blocked_total = Counter(
            p + "guard_blocked", "Deletions held back by a guard", ["server", "guard"],
            registry=r)
        self.server_degraded = Gauge(
            p + "server_degraded", "1 while the restart guard holds", ["server"], registry=r)
        self.events_published_total = Counter(
            p + "events_published", "Events published on Redis", ["type"], registry=r)
        self.outbox_pending = Gauge(
            p + "outbox_pending", "Events not yet published", registry=r)
        self.evolution_requests_total = Counter(
            p + "evolution_requests", "Calls to Evolution API", ["server", "endpoint", "code"],
            registry=r)
        self.evolution_request_duration_seconds = Histogram(
            p + "evolution_request_duration_seconds", "Latency of calls to Evolution API",
            ["server", "endpoint"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.leader = Gauge(
            p + "leader", "1 where this replica reconciles that server", ["server"], registry=r)
        self.replicas = Gauge(
            p + "replicas", "Live replicas this one sees (heartbeats within 15 s)", registry=r)
        self.replicas.set(1)
        self.hints_total = Counter(
            p + "hints", "Hints queued, by source", ["source"], registry=r)
        self.queue_depth = Gauge(
            p + "queue_depth", "Instance names waiting in the work queue", registry=r)
        self.hint_to_converged_seconds = Histogram(
            p + "hint_to_converged_seconds", "From a hint to its targeted reconcile finishing",
            registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.webhooks_received_total = Counter(
            p + "webhooks_received", "Evolution webhooks received, by event and result",
            ["server", "event", "result"], registry=r)
        for source in HINT_SOURCES:
            self.hints_total.labels(source=source)
        for event in (*WEBHOOK_EVENTS, OTHER_EVENT):
            for result in ("unauthorized", "invalid"):
                self.webhooks_received_total.labels(server=NO_SERVER, event=event, result=result)
        self.build_info = Gauge(
            p + "build_info", "Always 1", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        for t in EventType:
            self.events_published_total.labels(type=t.value)
        servers = list(servers)
        self.first_server = min(servers, default="")
        for server in servers:
            self.add_server(server)

    def server_label(self, server: str) -> str:
        """The `server` label of a drift or action: what belongs to no server (`missing`) is
        reported under the first server by name, whose leader decides it."""
        return server or self.first_server

    def add_server(self, server: str) -> None:
        for kind in DriftKind:
            self.drift_instances.labels(server=server, kind=kind.value)
        for state in LiveState:
            self.observed_instances.labels(server=server, state=state.value)
        for result in RESULTS:
            self.reconcile_total.labels(server=server, result=result)
        for stage in STAGES:
            self.reconcile_errors_total.labels(server=server, stage=stage)
        self.reconcile_duration_seconds.labels(server=server)
        self.last_attempt_timestamp_seconds.labels(server=server)
        self.last_success_timestamp_seconds.labels(server=server)
        for action in METERED_ACTIONS:
            for outcome in Outcome:
                self.actions_total.labels(server=server, action=action.value,
                                          outcome=outcome.value)
        for guard in Guard:
            self.guard_blocked_total.labels(server=server, guard=guard.value)
        self.server_degraded.labels(server=server)
        self.leader.labels(server=server)
        for event in (*WEBHOOK_EVENTS, OTHER_EVENT):
            for result in WEBHOOK_RESULTS:
                self.webhooks_received_total.labels(server=server, event=event, result=result)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """Liveness and readiness as the control loop reports them.

    Alive while the loop ticked within three intervals (SPEC 6), and before its first tick (the
    daemon is still starting). `clock` is monotonic seconds; tests pass their own.
    """

    def __init__(
        self, interval_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.last_tick: float | None = None
        self.ready = False

    def tick(self) -> None:
        self.last_tick = self.clock()

    def alive(self) -> bool:
        if self.last_tick is None:
            return True
        return self.clock() - self.last_tick <= 3 * self.interval_seconds


def http_app(metrics: Metrics, health: Health, extra: Sequence[BaseRoute] = ()) -> Starlette:
    """`/metrics`, `/healthz`, `/readyz`, and `extra` (the webhook receiver)."""
    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        ok = health.alive()
        return PlainTextResponse("ok\n" if ok else "stalled\n", status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok = health.ready
        return PlainTextResponse("ready\n" if ok else "not ready\n",
                                 status_code=200 if ok else 503)

    return Starlette(routes=[
        Route("/metrics", metrics_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *extra,
    ])


def configure_logging(fmt: str | None = None, level: str = "info") -> None:
    """JSON logs for machines, console logs on a terminal; to stderr so `--output` stays clean."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
