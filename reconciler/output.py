"""`--output table|json` for `once` and `plan`: the drift and what was (or would be) done.

Names, versions and error messages come from servers and rows that others control, so the table
escapes every character that is not printable (SPEC 8): a name holding a newline, a carriage
return or an escape sequence cannot forge a line or drive the terminal. JSON stays exact.
"""

from __future__ import annotations

import json

from reconciler.model import Action, DriftKind, Mode, ServerInventory
from reconciler.recorder import PassResult


def escape_controls(text: str) -> str:
    """`text` with each non-printable character (`str.isprintable`) shown as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _action_row(action: Action, outcome: str, error: str | None) -> dict[str, object]:
    return {
        "server": action.server,
        "instance_name": action.instance_name,
        "action": action.kind.value,
        "reason": action.reason,
        "guard": action.blocked_by.value if action.blocked_by else None,
        "outcome": outcome,
        "error": error,
    }


def _rows(result: PassResult, mode: Mode, plan_only: bool) -> list[dict[str, object]]:
    if not plan_only:
        return [_action_row(a, o.value, e) for a, o, e in result.report.outcomes]
    if result.plan is None:
        return []
    return [
        _action_row(a, "blocked" if a.blocked_by else
                    ("planned" if mode is Mode.ENFORCE else "dry_run"), None)
        for a in result.plan.actions
    ]


def as_dict(result: PassResult, mode: Mode, *, plan_only: bool) -> dict[str, object]:
    servers: dict[str, object] = {}
    for read in result.reads:
        if isinstance(read, ServerInventory):
            servers[read.server] = {"ok": True, "api_line": read.api_line,
                                    "version": read.version, "instances": len(read.instances)}
        else:
            servers[read.server] = {"ok": False, "error": read.error,
                                    "operator_error": read.operator_error}
    for name in result.skipped:
        servers[name] = {"ok": True, "skipped": "another replica leads this server"}
    return {
        "mode": mode.value,
        "command": "plan" if plan_only else "once",
        "started_at": result.started_at.isoformat(),
        "duration_seconds": round(result.duration, 3),
        "desired": len(result.desired.instances) if result.desired else None,
        "invalid_rows": result.desired.invalid_rows if result.desired else None,
        "servers": servers,
        "drift": [
            {"server": d.server, "instance_name": d.instance_name, "kind": d.kind.value,
             "detail": d.detail}
            for d in (result.plan.drift if result.plan else ())
        ],
        "actions": _rows(result, mode, plan_only),
        "degraded_servers": sorted(result.plan.degraded_servers) if result.plan else [],
        "errors": [{"server": e.server, "stage": e.stage.value, "error": e.message}
                   for e in result.errors],
    }


def render_json(result: PassResult, mode: Mode, *, plan_only: bool) -> str:
    return json.dumps(as_dict(result, mode, plan_only=plan_only), indent=2)


def table(headers: list[str], cells: list[list[str]]) -> str:
    rows = [[escape_controls(c) for c in r] for r in cells]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, *body])


def render_table(result: PassResult, mode: Mode, *, plan_only: bool) -> str:
    desired = len(result.desired.instances) if result.desired else "?"
    invalid = result.desired.invalid_rows if result.desired else "?"
    out = [f"{'plan' if plan_only else 'once'} ({mode.value}): {desired} desired rows, "
           f"{invalid} invalid, {result.duration:.3f}s"]
    server_rows = [[name, "skipped", "another replica leads this server"]
                   for name in result.skipped]
    for read in result.reads:
        if isinstance(read, ServerInventory):
            server_rows.append([read.server, "ok", f"{read.api_line} {read.version or ''}, "
                                f"{len(read.instances)} instances"])
        else:
            server_rows.append([read.server, "ERROR", read.error])
    if server_rows:
        out += ["", table(["SERVER", "READ", "DETAIL"], server_rows)]
    all_drift = result.plan.drift if result.plan else ()
    drift = [d for d in all_drift if d.kind is not DriftKind.UNMANAGED]
    out.append("")
    out.append(table(["SERVER", "INSTANCE", "DRIFT", "DETAIL"],
                      [[d.server or "-", d.instance_name, d.kind.value, d.detail]
                       for d in drift]) if drift else "no drift")
    if len(all_drift) > len(drift):
        out.append(f"({len(all_drift) - len(drift)} unmanaged instances left alone)")
    actions = _rows(result, mode, plan_only)
    out.append("")
    out.append(table(["SERVER", "INSTANCE", "ACTION", "REASON", "OUTCOME", "GUARD/ERROR"],
                      [[str(a["server"] or "-"), str(a["instance_name"]), str(a["action"]),
                        str(a["reason"]), str(a["outcome"]), str(a["guard"] or a["error"] or "")]
                       for a in actions]) if actions else "no actions")
    if result.plan and result.plan.degraded_servers:
        out.append("degraded (restart guard holds): "
                   + escape_controls(", ".join(sorted(result.plan.degraded_servers))))
    out += [escape_controls(f"ERROR {e.server}/{e.stage.value}: {e.message}")
            for e in result.errors]
    return "\n".join(out)
