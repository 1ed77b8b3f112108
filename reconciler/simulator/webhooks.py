"""The webhooks a simulated server sends, as Evolution sends them (CONTRACT.md section 6).

Envelope `{event, instance, data, destination, date_time, sender?, server_url, apikey}`, event
names with dots, the `WEBHOOK_BY_EVENTS` suffix (`/connection-update`) when asked. A terminal
close sends `status.instance`, `logout.instance` (v2 only) and `connection.update` (close, with
its code), in that order; a transient close sends nothing (2.2.1+, 1.8.4+); a delete sends the
logout's events when the instance was live, then `instance.delete` and (v2) `remove.instance`.
`global_only`: v2's global webhook, which carries only the events with a
`WEBHOOK_EVENTS_<NAME>` flag (no `status.instance`, `logout.instance`, `remove.instance`).

Delivery is one background thread posting in order, without retries; failures are counted.
"""

from __future__ import annotations

import json
import queue
import threading
from datetime import UTC, datetime
from typing import Any

import httpx

GLOBAL_EVENTS = frozenset({"connection.update", "instance.create", "instance.delete"})


class WebhookSender:
    def __init__(self, url: str, *, server_url: str, v1: bool, by_events: bool = False,
                 global_only: bool = False) -> None:
        self.url = url.rstrip("/")
        self.server_url = server_url
        self.v1 = v1
        self.by_events = by_events
        self.global_only = global_only
        self.sent: list[tuple[str, str, int]] = []
        """(event, instance, HTTP status or 0 for a failure) of every delivery, in order."""
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, daemon=True,
                                        name="simulator-webhooks")
        self._thread.start()

    def emit(self, event: str, instance: str, data: object, sender: str | None = None) -> None:
        if self.v1 and event in ("logout.instance", "remove.instance"):
            return
        if self.global_only and not self.v1 and event not in GLOBAL_EVENTS:
            return
        url = self.url + ("/" + event.replace(".", "-") if self.by_events else "")
        body: dict[str, Any] = {
            "event": event, "instance": instance, "data": data, "destination": url,
            "date_time": datetime.now(UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "server_url": self.server_url, "apikey": None}
        if sender:
            body["sender"] = sender
        self._queue.put((url, body))

    def terminal_close(self, instance: str, code: int, at: datetime,
                       disconnect_object: dict[str, Any] | None, sender: str | None) -> None:
        status: dict[str, Any] = {"instance": instance, "status": "closed"}
        if not self.v1:
            status.update(disconnectionAt=at.isoformat(timespec="milliseconds")
                          .replace("+00:00", "Z"), disconnectionReasonCode=code,
                          disconnectionObject=json.dumps(disconnect_object)
                          if disconnect_object is not None else None)
        self.emit("status.instance", instance, status, sender)
        self.emit("logout.instance", instance, None, sender)
        self.emit("connection.update", instance,
                  {"instance": instance, "state": "close", "statusReason": code}, sender)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _deliver(self) -> None:
        with httpx.Client(timeout=5) as http:
            while (item := self._queue.get()) is not None:
                url, body = item
                try:
                    status = http.post(url, json=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.sent.append((body["event"], body["instance"], status))
