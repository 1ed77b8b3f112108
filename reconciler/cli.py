"""Commands of SPEC section 8 and their exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import structlog

from reconciler import __version__
from reconciler.controller import Controller
from reconciler.events import EventPublisher
from reconciler.evolution.client import EvolutionClient
from reconciler.model import Mode, ServerInventory
from reconciler.observability import Health, Metrics, configure_logging
from reconciler.output import escape_controls, render_json, render_table
from reconciler.settings import Settings, SettingsError, load_settings, redact
from reconciler.store import IntegrationsTableMissing, Store, StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3

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


@asynccontextmanager
async def open_controller(settings: Settings, *, metrics: Metrics | None = None,
                          health: Health | None = None) -> AsyncIterator[Controller]:
    """Connect every adapter, migrate the own schema, and close everything on the way out."""
    metrics = metrics or Metrics([s.name for s in settings.servers])
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
        yield Controller(settings, store, clients, publisher, metrics, health)


async def cmd_once(settings: Settings, args: argparse.Namespace, *, record: bool) -> int:
    mode = Mode.DRY_RUN if getattr(args, "dry_run", False) else None
    allow = bool(getattr(args, "allow_mass_deletion", False))
    async with open_controller(settings) as controller:
        if record:
            async with controller.leading(take_over=True):
                result = await controller.run_pass(allow_mass_deletion=allow, mode=mode)
        else:
            result = await controller.run_pass(mode=mode, record=False)
        policy_mode = mode or settings.mode
        rendered = (render_json(result, policy_mode, record=record) if args.output == "json"
                    else render_table(result, policy_mode, record=record))
        sys.stdout.write(redact(rendered, settings) + "\n")
    if result.failed:
        return EXIT_FAILED
    if result.blocked:
        return EXIT_BLOCKED
    return EXIT_OK


async def cmd_run(settings: Settings) -> int:
    import uvicorn

    from reconciler.observability import http_app

    metrics = Metrics([s.name for s in settings.servers])
    health = Health(settings.interval_seconds)
    async with open_controller(settings, metrics=metrics, health=health) as controller:
        server = uvicorn.Server(uvicorn.Config(
            http_app(metrics, health), host=settings.http_host, port=settings.http_port,
            log_level="warning", access_log=False, lifespan="off"))
        stop = anyio.Event()

        async def on_signals() -> None:
            import signal

            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("stopping after the action in flight", signal=signum)
                    stop.set()
                    return

        log.info("reconciler started", version=__version__, mode=settings.mode.value,
                 servers=[s.name for s in settings.servers],
                 http=f"{settings.http_host}:{settings.http_port}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            tg.start_soon(on_signals)
            await controller.run_forever(stop)
            server.should_exit = True
            tg.cancel_scope.cancel()
    log.info("reconciler stopped")
    return EXIT_OK


async def cmd_migrate(settings: Settings) -> int:
    async with open_store(settings, require_table=False):
        print(f"schema {settings.schema} is up to date")
    return EXIT_OK


async def cmd_install_trigger(settings: Settings) -> int:
    async with open_store(settings) as store:
        await store.desired.install_trigger()
    print(f"deletion trigger installed on {settings.integrations_table}")
    return EXIT_OK


async def cmd_check(settings: Settings) -> int:
    """Reach the database, Redis and every server; print one line each."""
    ok = True
    lines: list[str] = []
    try:
        async with open_controller(settings) as controller:
            lines.append("database: ok")
            try:
                await controller.publisher.ping()
                lines.append("redis: ok")
            except Exception as exc:
                ok = False
                lines.append(f"redis: FAILED {exc}")
            for name, client in controller.clients.items():
                read = await client.read()
                if isinstance(read, ServerInventory):
                    lines.append(f"server {name}: ok ({read.api_line} {read.version or ''}, "
                                 f"clientName {read.client_name!r}, "
                                 f"{len(read.instances)} instances)")
                else:
                    ok = False
                    fix = " (the operator must fix this)" if read.operator_error else ""
                    lines.append(f"server {name}: FAILED {read.error}{fix}")
    except StoreError as exc:
        ok = False
        lines.append(f"database: FAILED {exc}")
    print("\n".join(escape_controls(redact(line, settings)) for line in lines))
    return EXIT_OK if ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Keeps Evolution API servers holding exactly the WhatsApp instances "
        "that the database says should exist.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="the daemon: migrate, then reconcile until SIGTERM/SIGINT")
    once = sub.add_parser("once", help="one pass over every server; prints the drift and "
                          "what was done")
    once.add_argument("--dry-run", action="store_true", help="change nothing, whatever "
                      "RECONCILER_MODE says")
    once.add_argument("--allow-mass-deletion", action="store_true",
                      help="lift the blast-radius guards for this one pass")
    once.add_argument("--output", choices=("table", "json"), default="table")
    plan = sub.add_parser("plan", help="the drift and the actions a pass would take; "
                          "changes nothing")
    plan.add_argument("--output", choices=("table", "json"), default="table")
    sub.add_parser("migrate", help="create or upgrade the daemon's own schema")
    sub.add_parser("install-trigger", help="add the deletion trigger to the integrations table")
    sub.add_parser("check", help="validate the settings and reach the database, Redis and "
                   "every server")
    demo = sub.add_parser("demo", help="the whole system on an embedded stack")
    demo.add_argument("--interval", type=float, default=3.0, help="seconds between passes")
    demo.add_argument("--until-converged", action="store_true",
                      help="exit 0 once the incident has converged (for tests and CI)")
    demo.add_argument("--timeout", type=float, default=None,
                      help="with --until-converged: give up (exit 1) after this many seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from reconciler.demo import run_demo

        return run_demo(interval=args.interval, until_converged=args.until_converged,
                        timeout=args.timeout)
    settings: Settings | None = None
    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        for warning in settings.warnings:
            log.warning(warning)
        if args.command == "run":
            return anyio.run(cmd_run, settings)
        if args.command in ("once", "plan"):
            return anyio.run(lambda: cmd_once(settings, args, record=args.command == "once"))
        if args.command == "migrate":
            return anyio.run(cmd_migrate, settings)
        if args.command == "install-trigger":
            return anyio.run(cmd_install_trigger, settings)
        return anyio.run(cmd_check, settings)
    except (SettingsError, UsageError) as exc:
        print(f"reconciler: {redact(str(exc), settings)}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, OSError) as exc:
        print(f"reconciler: {redact(str(exc), settings)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
