"""The composition root: every adapter connected once, for the CLI, the demo, tests and benchmarks.

Nothing here decides anything; it builds the store, the Evolution clients, the publisher, the
leadership and the recorder from the settings, serves the HTTP endpoints, and turns SIGTERM and
SIGINT into a stop.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import structlog

from reconciler.controller import Controller
from reconciler.events import EventPublisher
from reconciler.evolution.client import EvolutionClient
from reconciler.leadership import Leadership
from reconciler.observability import Health, Metrics, http_app
from reconciler.recorder import PassRecorder
from reconciler.settings import Settings
from reconciler.status_page import status_route
from reconciler.store import IntegrationsTableMissing, Store
from reconciler.targeted import Targeted
from reconciler.webhooks import WebhookReceiver

log = structlog.get_logger()


class UsageError(Exception):
    """Bad settings or a missing integrations table: exit 2, before anything is changed."""


@asynccontextmanager
async def open_store(settings: Settings, *, require_table: bool = True) -> AsyncIterator[Store]:
    """The database, its own schema migrated, and (by default) the integrations table checked."""
    store = await Store.connect(settings.database_url,
                                integrations_table=settings.integrations_table,
                                schema=settings.schema)
    try:
        await store.migrate()
        if require_table:
            try:
                await store.desired.check_table()
            except IntegrationsTableMissing as exc:
                raise UsageError(f"RECONCILER_INTEGRATIONS_TABLE: {exc}") from exc
        yield store
    finally:
        await store.close()


GC_THRESHOLDS = (10_000, 10, 10)
"""A pass at 10,000 instances keeps ~150,000 objects from one pass to the next, which the
collector's default thresholds (700, 10, 10) rescan every few thousand allocations: half of a
pass's CPU. Collecting young objects every 10,000 allocations takes it to a tenth."""


def tune_collector() -> None:
    """Move what start-up made (modules, classes, settings) out of every future collection, and
    collect young objects less often. Cycles are still collected; the daemon only makes fewer,
    larger collections. For the processes that pass after pass (`run`, `once`), not for a test
    session opening controllers by the hundred."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@asynccontextmanager
async def open_controller(settings: Settings, *, metrics: Metrics | None = None,
                          health: Health | None = None) -> AsyncIterator[Controller]:
    """Connect every adapter, migrate the own schema, and close everything on the way out."""
    names = [s.name for s in settings.servers]
    metrics = metrics or Metrics(names)
    health = health or Health(settings.interval_seconds)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        clients = {}
        for server in settings.servers:
            client = EvolutionClient(server, timeout=settings.http_timeout_seconds,
                                     metrics=metrics, probe_rps=settings.probe_rps,
                                     probe_interval=settings.probe_interval_seconds)
            stack.push_async_callback(client.aclose)
            clients[server.name] = client
        publisher = EventPublisher(settings.redis_url, channel=settings.events_channel,
                                   stream=settings.events_stream)
        stack.push_async_callback(publisher.aclose)
        controller = Controller(settings, store, clients, publisher,
                                Leadership(store.leases, names, metrics),
                                PassRecorder(metrics, health, settings.policy()))
        controller.targeted = Targeted(controller, settings.hint_rps)
        yield controller


@asynccontextmanager
async def serving(controller: Controller, host: str, port: int) -> AsyncIterator[None]:
    """`/metrics`, `/healthz`, `/readyz`, the status page `/` and the webhooks while the block
    runs."""
    import uvicorn

    recorder = controller.recorder
    targeted = controller.targeted
    receiver = WebhookReceiver(
        token=controller.settings.webhook_token, servers=tuple(controller.clients),
        offer=targeted.offer if targeted else (lambda _hint: False), metrics=recorder.metrics)
    app = http_app(recorder.metrics, recorder.health, receiver.routes())
    app.router.routes.append(status_route(controller))
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port,
        log_level="warning", access_log=False, lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        try:
            yield
        finally:
            server.should_exit = True
            tg.cancel_scope.cancel()


async def stop_on_signals(stop: anyio.Event) -> None:
    """SIGTERM or SIGINT: set `stop` (the loop finishes the action in flight, then exits)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping after the action in flight", signal=signum)
            stop.set()
            return
