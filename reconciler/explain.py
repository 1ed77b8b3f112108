"""`reconciler explain NAME`: everything the daemon knows and would decide about one instance.

The verdict is the plan-only pass's own (`PassOptions(plan_only=True)`: fresh reads of the
database and every server, no lease, no write), narrowed to one name by `names.instance_key`; this
module only puts the planner's decisions into words, it decides nothing itself. Blast-radius
guards depend on the whole fleet, which is why the pass reads everything, not only this name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from reconciler.controller import Controller, PassOptions
from reconciler.model import (
    BLAST_RADIUS_GUARDS,
    Action,
    Delete,
    DriftKind,
    Guard,
    InstanceMemory,
    Mode,
    ServerInventory,
)
from reconciler.names import instance_key
from reconciler.output import escape_controls, table

DRIFT_WORDS = {
    DriftKind.ORPHAN: "a confirmed orphan: managed, and no row names it",
    DriftKind.ORPHAN_PENDING: "an orphan not confirmed yet: no row names it, the pass waits",
    DriftKind.DUPLICATE_NUMBER: "live on the same WhatsApp number as another managed instance",
    DriftKind.DUPLICATE_NAME: "the same name is listed on more than one server",
    DriftKind.DUPLICATE_ROW: "more than one row names it",
    DriftKind.DISCONNECTED: "its row says connected, but it is not connected",
    DriftKind.RECONNECTED: "its row says disconnected or pending, but it is live and paired",
    DriftKind.MISSING: "an enabled row names it, and no server lists it",
    DriftKind.UNMANAGED: "its name does not match the managed-name pattern: never touched",
}

GUARD_WORDS = {
    Guard.PROTECTED: "it matches RECONCILER_PROTECTED, so it is never deleted",
    Guard.INCOMPLETE_READ: "the database or a server could not be read completely in this pass",
    Guard.INVALID_ROW: "a row that could not be read may name it (SPEC 4.3 rule 5)",
    Guard.RECHECK: "a row named it again at the re-check right before the call",
    Guard.EMPTY_DESIRED: "no row is desired while the server holds managed instances",
    Guard.COLLAPSE: "the desired or listed count fell by more than half since the last "
                    "successful pass",
    Guard.MAX_DELETIONS: "the pass would delete more than RECONCILER_MAX_DELETIONS on that server",
    Guard.MAX_FRACTION: "the pass would delete more than RECONCILER_MAX_DELETION_FRACTION of "
                        "that server's managed instances",
}

DELETE_CHECKS = (Guard.PROTECTED, Guard.INCOMPLETE_READ, "confirmation", Guard.INVALID_ROW,
                 Guard.EMPTY_DESIRED, Guard.COLLAPSE, Guard.MAX_DELETIONS, Guard.MAX_FRACTION)
"""SPEC 4.3 in the order `planner.guards` applies it; the first that holds stops the rest."""


def _when(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def outcome_of(action: Action, mode: Mode) -> str:
    """What a pass would audit: `blocked`, `dry_run`, or `planned` (carried out)."""
    if action.blocked_by is not None:
        return "blocked"
    return "planned" if mode is Mode.ENFORCE else "dry_run"


def guard_checks(action: Delete, mode: Mode) -> list[dict[str, str]]:
    """Each deletion guard of SPEC 4.3 as this delete meets it: passed, held, or not reached."""
    checks = [{"guard": "mode", "result": "passed" if mode is Mode.ENFORCE else "dry_run"},
              {"guard": "ownership", "result": "passed"}]
    reached = True
    for check in DELETE_CHECKS:
        name = check.value if isinstance(check, Guard) else check
        if not reached:
            checks.append({"guard": name, "result": "not reached"})
        elif check == action.blocked_by:
            checks.append({"guard": name, "result": "held"})
            reached = False
        else:
            checks.append({"guard": name, "result": "passed"})
    checks.append({"guard": Guard.RECHECK.value,
                   "result": "at the call" if reached else "not reached"})
    return checks


def _sentence(action: Action, mode: Mode) -> str:
    where = f" on {action.server}" if action.server else ""
    if isinstance(action, Delete) and action.already_gone:
        return f"an earlier delete took effect{where}: the next pass publishes instance.removed"
    if action.blocked_by is not None:
        lifted = (" (`once --allow-mass-deletion` lifts it for one pass)"
                  if action.blocked_by in BLAST_RADIUS_GUARDS else "")
        return (f"{action.kind.value}{where} is held back by the guard "
                f"{action.blocked_by.value}: {GUARD_WORDS[action.blocked_by]}{lifted}")
    if isinstance(action, Delete):
        verb = f"delete it{where}" + (", logging it out first" if action.logout_first else "")
    else:
        verb = f"{action.kind.value.replace('_', ' ')} ({action.reason}){where}"
    if mode is Mode.DRY_RUN:
        return f"a pass would {verb}, but the mode is dry_run: it is only audited"
    return f"the next pass will {verb} and publish {action.event.value}"


async def explain(controller: Controller, name: str) -> dict[str, object]:
    """The plan-only pass narrowed to `name`, with the memory and the audit history of it."""
    mode = controller.settings.mode
    key = instance_key(name)
    result = await controller.run_pass(PassOptions(plan_only=True))
    memory = await controller.store.memory.load()
    audit = await controller.store.decisions.audit_rows(instance_name=name, limit=50)
    if key != name:
        audit += await controller.store.decisions.audit_rows(instance_name=key, limit=50)
    rows = [r for r in (result.desired.instances if result.desired else ())
            if instance_key(r.instance_name) == key]
    listed = [(read.server, i) for read in result.reads if isinstance(read, ServerInventory)
              for i in read.instances if instance_key(i.name) == key]
    remembered = [m for (_, n), m in sorted(memory.instances.items()) if instance_key(n) == key]
    tombstone = next((t for n, t in memory.tombstones.items() if instance_key(n) == key), None)
    plan = result.plan
    drift = [d for d in (plan.drift if plan else ()) if instance_key(d.instance_name) == key]
    actions = [a for a in (plan.actions if plan else ()) if instance_key(a.instance_name) == key]
    degraded = sorted({s for s, _ in listed} & set(plan.degraded_servers if plan else ()))
    known = bool(rows or listed or remembered or tombstone or audit)
    verdict = [f"{d.kind.value}{' on ' + d.server if d.server else ''}: {DRIFT_WORDS[d.kind]}"
               + (f" ({d.detail})" if d.detail else "") for d in drift]
    verdict += [f"{s} is degraded: the restart guard holds its transient disconnects"
                for s in degraded]
    verdict += [_sentence(a, mode) for a in actions]
    if not verdict:
        verdict.append(_quiet(known, bool(rows), bool(listed), result.failed))
    verdict += [f"deleted from {r['server']} at {_when(r['at'])}: every guard of SPEC 4.3 passed "
                "(mode, ownership, complete read, confirmation, re-check, blast radius); "
                f"workers received instance.removed with event_id {r['event_id']}"
                for r in audit if r["action"] == "delete" and r["outcome"] == "ok"]
    return {
        "instance_name": name,
        "known": known,
        "mode": mode.value,
        "evaluated_at": result.started_at.isoformat(),
        "verdict": verdict,
        "rows": [{"id": str(r.id), "organization_id": _str(r.organization_id),
                  "enabled": r.enabled, "status": r.status,
                  "disconnect_reason": r.disconnect_reason} for r in rows],
        "listed": [{"server": server, "name": i.name, "stored_status": i.stored_status,
                    "live": i.live.value, "created_at": _when(i.created_at)}
                   for server, i in listed],
        "memory": [_memory(m) for m in remembered],
        "tombstone": None if tombstone is None else {
            "deleted_at": _when(tombstone.deleted_at),
            "organization_id": _str(tombstone.organization_id)},
        "drift": [{"server": d.server, "kind": d.kind.value, "detail": d.detail} for d in drift],
        "actions": [{"server": a.server, "action": a.kind.value, "reason": a.reason,
                     "guard": a.blocked_by.value if a.blocked_by else None,
                     "outcome": outcome_of(a, mode),
                     "guard_checks": guard_checks(a, mode)
                     if isinstance(a, Delete) and not a.already_gone else []}
                    for a in actions],
        "degraded_servers": degraded,
        "audit": [{"id": r["id"], "at": _when(r["at"]), "server": r["server"],
                   "action": r["action"], "reason": r["reason"], "guard": r["guard"],
                   "outcome": r["outcome"], "error": r["error"],
                   "event_id": _str(r["event_id"]), "epoch": r["epoch"]}
                  for r in sorted(audit, key=lambda r: -int(str(r["id"])))],
        "errors": [{"server": e.server, "stage": e.stage.value, "error": e.message}
                   for e in result.errors],
    }


def _quiet(known: bool, named: bool, listed: bool, failed: bool) -> str:
    """The verdict when the planner finds no drift and no action for the name."""
    if failed:
        return "nothing can be decided while a read fails (see errors)"
    if not known:
        return "unknown: no row names it, no server lists it, and the daemon has no record of it"
    if named and listed:
        return "in sync: a row names it and a server lists it; nothing to do"
    if named:
        return ("a row names it but no server lists it: not yet confirmed missing, or the row "
                "is disabled or already marked; nothing to do now")
    if listed:
        return "listed and not desired, but not an orphan the planner acts on; nothing to do"
    return "no row names it and no server lists it any more; nothing to do"


def _memory(m: InstanceMemory) -> dict[str, object]:
    return {"server": m.server, "first_seen": _when(m.first_seen),
            "orphan_since": _when(m.orphan_since), "orphan_passes": m.orphan_streak,
            "last_live": m.last_live.value,
            "delete_requested_at": _when(m.delete_requested_at),
            "delete_reason": m.delete_reason, "delete_event_id": _str(m.delete_event_id),
            "delete_attempts": m.delete_attempts, "next_retry_at": _when(m.next_delete_at)}


def render_json(explained: dict[str, object]) -> str:
    return json.dumps(explained, indent=2)


def _section(title: str, headers: list[str], cells: Sequence[Sequence[object]]) -> list[str]:
    if not cells:
        return ["", f"{title}: none"]
    return ["", f"{title}:", table(headers, [["-" if c is None else str(c) for c in r]
                                             for r in cells])]


def render_table(e: dict[str, object]) -> str:
    """Plain words first, then the evidence; `table` escapes control characters per cell."""
    def rows(field: str) -> list[dict[str, object]]:
        value = e[field]
        assert isinstance(value, list)
        return value

    out = [escape_controls(f"{e['instance_name']} ({e['mode']}, {e['evaluated_at']})")]
    out += [escape_controls(f"  - {line}") for line in rows("verdict")]
    out += _section("rows naming it", ["ROW", "ORGANIZATION", "ENABLED", "STATUS", "REASON"],
                    [[r["id"], r["organization_id"], r["enabled"], r["status"],
                      r["disconnect_reason"]] for r in rows("rows")])
    out += _section("listed", ["SERVER", "STORED STATUS", "LIVE", "CREATED"],
                    [[r["server"], r["stored_status"], r["live"], r["created_at"]]
                     for r in rows("listed")])
    out += _section("memory", ["SERVER", "FIRST SEEN", "ORPHAN PASSES", "DELETE REQUESTED",
                               "EVENT ID", "ATTEMPTS", "NEXT RETRY"],
                    [[m["server"], m["first_seen"], m["orphan_passes"], m["delete_requested_at"],
                      m["delete_event_id"], m["delete_attempts"], m["next_retry_at"]]
                     for m in rows("memory")])
    out += _section("verdict of a pass now", ["SERVER", "ACTION", "REASON", "OUTCOME", "GUARD"],
                    [[a["server"] or "-", a["action"], a["reason"], a["outcome"], a["guard"]]
                     for a in rows("actions")])
    for action in rows("actions"):
        checks = action["guard_checks"]
        assert isinstance(checks, list)
        if checks:
            out.append(escape_controls("guard checks: " + ", ".join(
                f"{c['guard']} {c['result']}" for c in checks)))
    out += _section("audit history", ["AT", "SERVER", "ACTION", "REASON", "OUTCOME", "GUARD",
                                      "EVENT ID", "ERROR"],
                    [[r["at"], r["server"] or "-", r["action"], r["reason"], r["outcome"],
                      r["guard"], r["event_id"], r["error"]] for r in rows("audit")])
    out += [escape_controls(f"ERROR {r['server']}/{r['stage']}: {r['error']}")
            for r in rows("errors")]
    return "\n".join(out)
