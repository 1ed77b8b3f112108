"""`GET /`: the fleet on one page for people without Grafana (SPEC 6).

Rendered on the server from what the daemon already holds: the last `PassResult` the recorder
kept, its metrics, and the newest audit rows; it costs no request to Evolution, so a person
refreshing it never adds load on a server. Only instance names and their state are shown (no
owner JID, no organization id, no error text that a server wrote), and every value is
HTML-escaped. A meta refresh keeps it current without JavaScript.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from reconciler import __version__
from reconciler.controller import Controller
from reconciler.model import DriftKind, ServerInventory
from reconciler.observability import PREFIX
from reconciler.output import escape_controls
from reconciler.store import StoreError

log = structlog.get_logger()

RECENT_ACTIONS = 20
DRIFT_LISTED = 100
"""Most drifting instances listed by name: the page stays small with 10,000 instances."""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1rem;color:#222;max-width:60rem}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.4rem}
.wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;white-space:nowrap}
.bad{color:#b00020;font-weight:600}.ok{color:#1b5e20}.muted{color:#777}
"""


def esc(value: object) -> str:
    """Control characters made visible, then HTML-escaped: names come from others."""
    return html.escape(escape_controls("-" if value is None or value == "" else str(value)))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """`rows` hold HTML already escaped by `esc` (or a marked-up cell built from it)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="wrap"><table><tr>{head}</tr>{body}</table></div>'


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


class StatusPage:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def _metric(self, name: str, **labels: str) -> float | None:
        return self.controller.recorder.metrics.registry.get_sample_value(PREFIX + name, labels)

    async def render(self) -> str:
        settings = self.controller.settings
        servers = [s.name for s in settings.servers]
        last = self.controller.recorder.last
        now = time.time()
        reads = {r.server: r for r in (last.reads if last else ())}
        server_rows = []
        for name in servers:
            read = reads.get(name)
            success = self._metric("last_success_timestamp_seconds", server=name) or None
            degraded = bool(self._metric("server_degraded", server=name))
            leader = bool(self._metric("leader", server=name))
            if isinstance(read, ServerInventory):
                version, line = esc(read.version), esc(read.api_line)
                state = '<span class="ok">ok</span>'
            else:
                version = line = esc(None)
                state = ('<span class="bad">read failed</span>' if read is not None
                         else '<span class="muted">not read yet</span>')
            server_rows.append([
                esc(name), version, line, esc("yes" if leader else "no"),
                esc(_age(now - success if success else None)),
                '<span class="bad">degraded</span>' if degraded else esc("no"), state])
        drift_rows = [[esc(k.value), *(esc(int(self._metric(
            "drift_instances", server=s, kind=k.value) or 0)) for s in servers)]
            for k in DriftKind]
        drifting = [d for d in (last.plan.drift if last and last.plan else ())
                    if d.kind is not DriftKind.UNMANAGED]
        listed = _table(["server", "instance", "drift"],
                        ([esc(d.server or "(fleet)"), esc(d.instance_name), esc(d.kind.value)]
                         for d in drifting[:DRIFT_LISTED]))
        more = (f"<p class=muted>and {len(drifting) - DRIFT_LISTED} more "
                "(<code>reconciler plan</code> lists them all)</p>"
                if len(drifting) > DRIFT_LISTED else "")
        backlog = [f"outbox: {esc(int(self._metric('outbox_pending') or 0))} events waiting"]
        queue = self._metric("queue_depth")
        if queue is not None:
            backlog.append(f"work queue: {esc(int(queue))} instances waiting")
        passed = (f"last pass {esc(_age(time.time() - last.started_at.timestamp()))}, "
                  f"took {last.duration:.2f}s" if last else "no pass yet")
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="refresh" content="{max(5, int(settings.interval_seconds))}">'
            f"<title>evolution-reconciler</title><style>{_STYLE}</style></head><body>"
            "<h1>evolution-reconciler</h1>"
            f"<p>mode <b>{esc(settings.mode.value)}</b> · version {esc(__version__)} · "
            f"{passed} · {len(drifting)} drifting</p>"
            "<h2>Servers</h2>"
            + _table(["server", "version", "line", "leader", "last success", "degraded",
                      "last read"], server_rows)
            + "<h2>Drift by kind</h2>" + _table(["kind", *servers], drift_rows)
            + "<h2>Drifting instances</h2>" + (listed if drifting else "<p>none</p>") + more
            + "<h2>Recent actions</h2>" + await self._actions()
            + "<h2>Backlog</h2><p>" + "<br>".join(backlog) + "</p></body></html>")

    async def _actions(self) -> str:
        try:
            rows = await self.controller.store.decisions.audit_rows(limit=RECENT_ACTIONS)
        except StoreError as exc:
            log.warning("status page: the audit log could not be read", error=str(exc))
            return '<p class="bad">the audit log could not be read</p>'
        if not rows:
            return "<p>none yet</p>"
        out = []
        for r in rows:
            outcome = str(r["outcome"])
            mark = "bad" if outcome in ("failed", "blocked") else "ok"
            at = r["at"]
            out.append([esc(at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
                            if isinstance(at, datetime) else at),
                        esc(r["server"] or "(fleet)"), esc(r["instance_name"]), esc(r["action"]),
                        esc(r["reason"]), f'<span class="{mark}">{esc(outcome)}</span>',
                        esc(r["guard"])])
        return _table(["at (UTC)", "server", "instance", "action", "reason", "outcome", "guard"],
                      out)

    async def endpoint(self, _: Request) -> Response:
        return HTMLResponse(await self.render())


def status_route(controller: Controller) -> Route:
    return Route("/", StatusPage(controller).endpoint)
