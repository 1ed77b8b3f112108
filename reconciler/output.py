"""`--output table|json` for `once` and `plan`: the drift and what was (or would be) done.

Names, versions and error messages come from servers and rows that others control, so the table
escapes every character that is not printable (SPEC 8): a name holding a newline, a carriage
return or an escape sequence cannot forge a line or drive the terminal. JSON stays exact.
"""

from __future__ import annotations

import json

from reconciler.controller import PassResult
from reconciler.model import Action, DriftKind, Mode, ServerInventory


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


def _rows(result: PassResult, mode: Mode, record: bool) -> list[dict[str, object]]:
    if record:
        return [_action_row(a, o.value, e) for a, o, e in result.report.outcomes]
    if result.plan is None:
        return []
    return [
        _action_row(a, "blocked" if a.blocked_by else
                    ("planned" if mode is Mode.ENFORCE else "dry_run"), None)
        for a in result.plan.actions
    ]


def as_dict(result: PassResult, mode: Mode, *, record: bool) -> dict[str, object]:
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
        "command": "once" if record else "plan",
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
        "actions": _rows(result, mode, record),
        "degraded_servers": sorted(result.plan.degraded_servers) if result.plan else [],
        "errors": [{"server": s, "stage": st, "error": e} for s, st, e in result.errors],
    }


def render_json(result: PassResult, mode: Mode, *, record: bool) -> str:
    return json.dumps(as_dict(result, mode, record=record), indent=2)


def _table(headers: list[str], cells: list[list[str]]) -> str:
    rows = [[escape_controls(c) for c in r] for r in cells]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, *body])


def render_table(result: PassResult, mode: Mode, *, record: bool) -> str:
    desired = len(result.desired.instances) if result.desired else "?"
    invalid = result.desired.invalid_rows if result.desired else "?"
    out = [f"{'once' if record else 'plan'} ({mode.value}): {desired} desired rows, "
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
        out += ["", _table(["SERVER", "READ", "DETAIL"], server_rows)]
    all_drift = result.plan.drift if result.plan else ()
    drift = [d for d in all_drift if d.kind is not DriftKind.UNMANAGED]
    out.append("")
    out.append(_table(["SERVER", "INSTANCE", "DRIFT", "DETAIL"],
                      [[d.server or "-", d.instance_name, d.kind.value, d.detail]
                       for d in drift]) if drift else "no drift")
    if len(all_drift) > len(drift):
        out.append(f"({len(all_drift) - len(drift)} unmanaged instances left alone)")
    actions = _rows(result, mode, record)
    out.append("")
    out.append(_table(["SERVER", "INSTANCE", "ACTION", "REASON", "OUTCOME", "GUARD/ERROR"],
                      [[str(a["server"] or "-"), str(a["instance_name"]), str(a["action"]),
                        str(a["reason"]), str(a["outcome"]), str(a["guard"] or a["error"] or "")]
                       for a in actions]) if actions else "no actions")
    if result.plan and result.plan.degraded_servers:
        out.append("degraded (restart guard holds): "
                   + escape_controls(", ".join(sorted(result.plan.degraded_servers))))
    out += [escape_controls(f"ERROR {server}/{stage}: {error}")
            for server, stage, error in result.errors]
    return "\n".join(out)
