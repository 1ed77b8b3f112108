"""`reconciler audit` and the `explain` command's wiring: the operator's answers without SQL.

Both only read: `audit` the audit log, `explain` a plan-only pass (see `explain`). Their
arguments are checked by argparse, so a bad `--since` or `--limit` exits 2 naming the flag before
the database is touched.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime

from reconciler import explain
from reconciler.model import ActionKind, Outcome
from reconciler.output import table
from reconciler.settings import Settings, redact
from reconciler.wiring import open_controller, open_store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]+)([smhd])")


def duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `7d` in seconds; argparse names the flag when this raises."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 90s, 15m, 2h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser("explain", help="everything the daemon knows and would decide about "
                        "one instance; changes nothing")
    ex.add_argument("name", metavar="NAME")
    ex.add_argument("--output", choices=("table", "json"), default="table")
    au = sub.add_parser("audit", help="the audit log, newest first")
    au.add_argument("--since", type=duration, metavar="DURATION",
                    help="only rows newer than this (90s, 15m, 2h, 7d)")
    au.add_argument("--instance", metavar="NAME")
    au.add_argument("--action", choices=[a.value for a in ActionKind])
    au.add_argument("--outcome", choices=[o.value for o in Outcome])
    au.add_argument("--limit", type=positive, default=50)
    au.add_argument("--output", choices=("table", "json"), default="table")


async def cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    async with open_controller(settings) as controller:
        explained = await explain.explain(controller, args.name)
    rendered = (explain.render_json(explained) if args.output == "json"
                else explain.render_table(explained))
    sys.stdout.write(redact(rendered, settings) + "\n")
    return 1 if explained["errors"] else 0


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if value is None or isinstance(value, int | str) else str(value)


async def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    async with open_store(settings) as store:
        found = await store.decisions.audit_rows(
            instance_name=args.instance, limit=args.limit, since_seconds=args.since,
            action=args.action, outcome=args.outcome)
    rows = [{k: _plain(v) for k, v in r.items()} for r in found]
    if args.output == "json":
        rendered = json.dumps(rows, indent=2)
    elif not rows:
        rendered = "no audit rows"
    else:
        rendered = table(
            ["ID", "AT", "SERVER", "INSTANCE", "ACTION", "REASON", "OUTCOME", "GUARD", "EVENT ID",
             "ERROR"],
            [[str(r[k]) if r[k] not in (None, "") else "-" for k in (
                "id", "at", "server", "instance_name", "action", "reason", "outcome", "guard",
                "event_id", "error")] for r in rows])
    sys.stdout.write(redact(rendered, settings) + "\n")
    return 0
