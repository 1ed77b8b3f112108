"""Evolution's webhooks (SPEC 4.6): each accepted event is a hint for its instance, nothing more.

The receiver answers at once, whatever the loop is doing: a webhook that fails or hangs makes
Evolution retry for minutes, and a 4xx makes it drop the event for good, so only what is wrong
for ever (a wrong token, an unknown server, a body that is no JSON object) is refused. The
token sits in the URL Evolution is given; it is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.hints import Hint
from reconciler.observability import NO_SERVER, OTHER_EVENT, WEBHOOK_EVENTS, Metrics

MAX_WEBHOOK_BODY = 1024 * 1024
"""1 MiB: a connection event is a few hundred bytes; message events can be large."""

PREFIX = "/webhooks/evolution/{server}/{token}"


@dataclass(frozen=True)
class WebhookReceiver:
    token: str | None
    """`RECONCILER_WEBHOOK_TOKEN`; None refuses every webhook (403)."""
    servers: Collection[str]
    offer: Callable[[Hint], bool]
    """Queues a hint without waiting; False when the queue's intake is full."""
    metrics: Metrics

    def routes(self) -> list[Route]:
        return [Route(PREFIX, self.receive, methods=["POST"]),
                Route(PREFIX + "/{suffix}", self.receive, methods=["POST"])]

    async def receive(self, request: Request) -> Response:
        server = request.path_params["server"]
        if self.token is None or not hmac.compare_digest(
                request.path_params["token"].encode(), self.token.encode()):
            self._count(NO_SERVER if server not in self.servers else server, OTHER_EVENT,
                        "unauthorized")
            status = 403 if self.token is None else 401
            return JSONResponse({"error": "unauthorized"}, status_code=status)
        if server not in self.servers:
            self._count(NO_SERVER, OTHER_EVENT, "invalid")
            return JSONResponse({"error": "unknown server"}, status_code=404)
        body = await _read_capped(request)
        if body is None:
            self._count(server, OTHER_EVENT, "invalid")
            return JSONResponse({"error": "body over 1 MiB"}, status_code=413)
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            self._count(server, OTHER_EVENT, "invalid")
            return JSONResponse({"error": "body is not a JSON object"}, status_code=400)
        event = event_name(envelope.get("event"), request.path_params.get("suffix"))
        name = instance_name(envelope)
        if event not in WEBHOOK_EVENTS or name is None:
            self._count(server, event if event in WEBHOOK_EVENTS else OTHER_EVENT, "ignored")
            return JSONResponse({"result": "ignored"})
        accepted = self.offer(Hint("webhook", server, name))
        self._count(server, event, "accepted" if accepted else "ignored")
        return JSONResponse({"result": "accepted" if accepted else "ignored"})

    def _count(self, server: str, event: str, result: str) -> None:
        self.metrics.webhooks_received_total.labels(server=server, event=event,
                                                    result=result).inc()


def event_name(value: object, suffix: str | None) -> str:
    """`connection.update` from the envelope (`CONNECTION_UPDATE` in some v1 builds), else from
    the `WEBHOOK_BY_EVENTS` suffix (`connection-update`)."""
    raw = value if isinstance(value, str) and value else (suffix or "")
    return raw.strip().lower().replace("_", ".").replace("-", ".")


def instance_name(envelope: dict[str, object]) -> str | None:
    """The instance an event is about: the envelope's `instance`, else its data's."""
    data = envelope.get("data")
    candidates = [envelope.get("instance")]
    if isinstance(data, dict):
        candidates += [data.get("instance"), data.get("instanceName")]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return None


async def _read_capped(request: Request) -> bytes | None:
    """The body, or None once it is over `MAX_WEBHOOK_BODY` (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_WEBHOOK_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WEBHOOK_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
