"""Commands of SPEC section 8 and their exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import anyio
import structlog
from redis.exceptions import RedisError

from reconciler import __version__
from reconciler.audit import add_commands as add_operator_commands
from reconciler.audit import cmd_audit, cmd_explain, duration
from reconciler.controller import PassOptions
from reconciler.loop import run_forever
from reconciler.model import Mode, ServerInventory
from reconciler.observability import configure_logging
from reconciler.output import escape_controls, render_json, render_table
from reconciler.settings import Settings, SettingsError, load_settings, redact
from reconciler.store import StoreError
from reconciler.wiring import (
    UsageError,
    open_controller,
    open_store,
    serving,
    stop_on_signals,
    tune_collector,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3

log = structlog.get_logger()


async def cmd_once(settings: Settings, args: argparse.Namespace, *, plan_only: bool) -> int:
    options = PassOptions(
        allow_mass_deletion=bool(getattr(args, "allow_mass_deletion", False)),
        mode=Mode.DRY_RUN if getattr(args, "dry_run", False) else None,
        plan_only=plan_only,
    )
    tune_collector()
    async with open_controller(settings) as controller:
        if plan_only:
            result = await controller.run_pass(options)
        else:
            async with controller.leadership.leading(take_over=True):
                result = await controller.run_pass(options)
        mode = options.mode or settings.mode
        rendered = (render_json(result, mode, plan_only=plan_only) if args.output == "json"
                    else render_table(result, mode, plan_only=plan_only))
        sys.stdout.write(redact(rendered, settings) + "\n")
    if result.failed:
        return EXIT_FAILED
    if result.blocked:
        return EXIT_BLOCKED
    return EXIT_OK


async def cmd_run(settings: Settings) -> int:
    stop = anyio.Event()
    tune_collector()
    async with open_controller(settings) as controller, \
            serving(controller, settings.http_host, settings.http_port), \
            anyio.create_task_group() as tg:
        log.info("reconciler started", version=__version__, mode=settings.mode.value,
                 servers=[s.name for s in settings.servers],
                 http=f"{settings.http_host}:{settings.http_port}")
        tg.start_soon(stop_on_signals, stop)
        await run_forever(controller, stop)
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


_EVENT_COLUMNS = (("OCCURRED_AT", "occurred_at", 32), ("TYPE", "type", 21),
                  ("INSTANCE", "instance_name", 60), ("SERVER", "server", 10),
                  ("REASON", "reason", 16), ("EVENT_ID", "event_id", 0))


def _event_row(cells: Sequence[str]) -> str:
    """Fixed widths, so that `--follow` can print each row as it comes."""
    return "  ".join(escape_controls(c).ljust(w) for c, (_, _, w) in
                     zip(cells, _EVENT_COLUMNS, strict=True)).rstrip()


def _event_line(fields: dict[str, str]) -> tuple[str, str]:
    """The JSON exactly as published, and its table row (escaped: names come from others)."""
    raw = fields.get("event")
    if raw is None:
        raw = json.dumps(fields, ensure_ascii=False)
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        return raw, escape_controls(f"? {raw}")
    return raw, _event_row([str(event.get(key) if event.get(key) is not None else "-")
                            for _, key, _ in _EVENT_COLUMNS])


async def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    """Prints the stream's events (SPEC 5.1), oldest first; with `--follow`, until interrupted."""
    from reconciler.consumer import read_stream

    if not settings.redis_url:
        raise UsageError("RECONCILER_REDIS_URL: required (or RECONCILER_REDIS_URL_FILE)")
    if not settings.events_stream:
        raise UsageError("RECONCILER_EVENTS_STREAM: empty, so the stream is disabled")
    since_ms = None if args.since is None else int((time.time() - args.since) * 1000)
    if args.output == "table":
        print(_event_row([title for title, _, _ in _EVENT_COLUMNS]), flush=True)
    try:
        async for _, fields in read_stream(settings.redis_url, settings.events_stream,
                                           since_ms=since_ms, follow=args.follow):
            raw, row = _event_line(fields)
            print(raw if args.output == "json" else row, flush=True)
    except RedisError as exc:
        print(f"reconciler: reading the stream: {redact(str(exc), settings)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


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
    events = sub.add_parser("events", help="the events of the stream, oldest first")
    events.add_argument("--since", type=duration, metavar="DURATION",
                        help="only events from this long ago (90s, 15m, 2h, 7d)")
    events.add_argument("--follow", action="store_true", help="then print new events as they "
                        "are published, until interrupted")
    events.add_argument("--output", choices=("table", "json"), default="table",
                        help="json: one event per line, exactly as published")
    add_operator_commands(sub)
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
        settings = load_settings(require_services=args.command != "events")
        configure_logging(settings.log_format, settings.log_level)
        for warning in settings.warnings:
            log.warning(warning)
        if args.command == "run":
            return anyio.run(cmd_run, settings)
        if args.command in ("once", "plan"):
            return anyio.run(lambda: cmd_once(settings, args, plan_only=args.command == "plan"))
        if args.command == "events":
            return anyio.run(cmd_events, settings, args)
        if args.command == "migrate":
            return anyio.run(cmd_migrate, settings)
        if args.command == "explain":
            return anyio.run(cmd_explain, settings, args)
        if args.command == "audit":
            return anyio.run(cmd_audit, settings, args)
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
