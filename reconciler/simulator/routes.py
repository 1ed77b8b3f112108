"""What each route of a simulated server does: guards in Evolution's order, then the change.

The guard order is the real servers' (a missing name is 404 even with a bad key); the bodies come
from `wire`. Called by the server under the state's lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from reconciler.simulator.state import INTEGRATIONS, SimInstance, SimState, new_token
from reconciler.simulator.wire import (
    JSON_MEDIA,
    envelope,
    json_response,
    metrics,
    not_exist,
    root,
    success,
    v1_created,
    v1_item,
    v2_created,
    v2_row,
    v8_json_error,
)

PRESENCES = ("unavailable", "available", "composing", "recording", "paused")


class Routes(SimState):
    """The routes over the state; `Simulator` serves them over HTTP."""

    def _authorized(self, key: str | None, instance: SimInstance | None) -> bool:
        if not key:
            return False
        return key == self.api_key or (instance is not None and key == instance.token)

    # --- routes ----------------------------------------------------------------------------

    def _root(self) -> Response:
        return root(self, self.url)

    def _metrics(self) -> Response:
        if not self.serves_metrics:
            return envelope(404, ["Cannot GET /metrics"])
        return metrics(self, list(self._instances.values()), self.url)

    def _fetch(self, key: str | None, params: Mapping[str, str]) -> Response:
        if self._v1:
            return self._fetch_v1(key, params.get("instanceName"))
        name = params.get("instanceName")
        instance_id = params.get("instanceId")
        number = params.get("number")
        everything = list(self._instances.values())
        if key and key == self.api_key:
            if instance_id or number:
                wanted = instance_id or number
                match = next((i for i in everything
                              if (i.id == instance_id if instance_id else i.number == number)),
                             None)
                if match is None or not match.loaded:
                    return envelope(404, [f'Instance "{wanted}" not found'])
                return json_response(200, [v2_row(self, match)])
            if name is not None:
                found = self._instances.get(name)
                if found is None or not found.loaded:
                    return envelope(404, [f'Instance "{name}" not found'])
                return json_response(200, [v2_row(self, found)])
            return json_response(200, [v2_row(self, i) for i in everything])
        rows = [v2_row(self, i) for i in everything
                if key and i.token == key and (name is None or i.name == name)
                and (instance_id is None or i.id == instance_id)]
        if not rows:
            return envelope(401, "Unauthorized")
        return json_response(200, rows)

    def _fetch_v1(self, key: str | None, name: str | None) -> Response:
        loaded = [i for i in self._instances.values() if i.loaded]
        if key and key == self.api_key:
            if name is None:
                return json_response(200, [v1_item(self, i, self.url) for i in loaded])
            found = self._instances.get(name)
            if found is not None and found.loaded:
                return json_response(200, v1_item(self, found, self.url))
            message = [f'Instance "{name}" not found']
            if self.at_least(1, 8, 4):
                return json_response(500, {"error": True, "message": message})
            return envelope(404, message)
        own = [i for i in loaded if key and i.token == key]
        if not own:
            return envelope(401, "Unauthorized")
        return json_response(200, [v1_item(self, own[0], self.url)])

    def _create(self, key: str | None, raw: bytes) -> Response:
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            return json_response(400, {"status": 400, "error": "Internal Server Error",
                               "response": {"message": v8_json_error(text, exc)}})
        if not isinstance(body, dict | list):
            return json_response(400, {"status": 400, "error": "Internal Server Error",
                               "response": {"message": v8_json_error(text, None)}})
        fields = body if isinstance(body, dict) else {}
        name = fields.get("instanceName")
        if name is None and self._instances:
            return envelope(403, ['This name "undefined" is already in use.'])
        name = "" if name is None else str(name)
        if name in self._instances:
            return envelope(403, [f'This name "{name}" is already in use.'])
        if key != self.api_key:
            return envelope(401, "Unauthorized")
        if self._v1:
            return self._create_v1(name, fields)
        integration = fields.get("integration")
        if integration not in INTEGRATIONS:
            return envelope(400, ["Invalid integration"])
        if self.at_least(2, 4, 0):
            name = name.strip()
        token = fields.get("token") or new_token()
        instance = SimInstance(name=name, token=str(token), integration=str(integration),
                               number=fields.get("number"),
                               state="close" if integration == INTEGRATIONS[0] else "open")
        self._instances[name] = instance
        self._emit("instance.create", instance, {"instanceName": name, "instanceId": instance.id})
        qrcode = self._start_session(instance) if fields.get("qrcode") is True else None
        status = instance.state if self.pairing or qrcode is None else "close"
        return v2_created(self, instance, fields, status, qrcode)

    def _create_v1(self, name: str, fields: dict[str, Any]) -> Response:
        token = fields.get("token")
        tokens = {i.token for i in self._instances.values()}
        if (token and token in tokens) or (not token and not self.expose and self._instances):
            return envelope(400, ["Token already exists"])
        integration = fields.get("integration")
        instance = SimInstance(name=name, token=str(token or new_token()),
                               integration=integration, number=fields.get("number"))
        self._instances[name] = instance
        qrcode = self._start_session(instance) if fields.get("qrcode") is True else None
        return v1_created(instance, fields, qrcode)


    def _by_name(self, endpoint: str, name: str, key: str | None, raw: bytes) -> Response:
        instance = self._instances.get(name)
        if instance is None:
            return not_exist(name)
        if not self._authorized(key, instance):
            return envelope(401, "Unauthorized")
        if endpoint == "connectionState":
            return self._connection_state(instance)
        if endpoint == "connect":
            return self._connect(instance)
        if endpoint == "restart":
            return self._restart(instance)
        if endpoint == "logout":
            return self._logout(instance)
        if endpoint == "delete":
            return self._delete(instance)
        return self._set_presence(instance, raw)

    def _connection_state(self, instance: SimInstance) -> Response:
        if not instance.loaded:
            return json_response(200, {"instance": {"instanceName": instance.name}})
        return json_response(
            200, {"instance": {"instanceName": instance.name, "state": instance.state}})

    def _connect(self, instance: SimInstance) -> Response:
        if instance.state == "open":
            return self._connection_state(instance)
        if instance.state == "connecting":
            return json_response(200, self._qr(instance) if self.pairing else {"count": 0})
        return json_response(200, self._start_session(instance))

    def _restart(self, instance: SimInstance) -> Response:
        if self._v1:
            if instance.state == "open":
                return self._connection_state(instance)
            return Response(b"", status_code=200, media_type=JSON_MEDIA)
        if instance.state == "close":
            return json_response(200, {"error": True, "message": "[object Object]"})
        return self._connect(instance)

    def _logout(self, instance: SimInstance) -> Response:
        if not instance.loaded and not self._v1:
            return success("Instance logged out")
        if instance.state == "close":
            if not self._v1 and self.at_least(2, 4, 0):
                return success("Instance was already disconnected")
            return envelope(400, [f'The "{instance.name}" instance is not connected'])
        if instance.socket_dead:
            if self._awaits_logout_in_delete:
                return envelope(500, ["Error: Connection Closed"])
            if not self._v1 and self.at_least(2, 4, 0):
                self._log_out(instance)
            return success("Instance logged out")
        self._log_out(instance)
        return success("Instance logged out")

    def _delete(self, instance: SimInstance) -> Response:
        if instance.loaded and instance.state in ("open", "connecting"):
            if instance.state == "open" and self._rejects_open_delete:
                return envelope(400, [f'The "{instance.name}" instance needs to be disconnected'])
            if instance.socket_dead and self._awaits_logout_in_delete:
                return envelope(400, ["[object Object]"])
            if not instance.socket_dead:
                self._log_out(instance)
        self._emit("instance.delete", instance,
                   {"instanceName": instance.name, "instanceId": instance.id})
        self._emit("remove.instance", instance, None)
        if self._v1 or self.delete_delay <= 0:
            del self._instances[instance.name]
        elif instance.deleting_until is None:
            instance.deleting_until = time.monotonic() + self.delete_delay
        return success("Instance deleted")

    def _set_presence(self, instance: SimInstance, raw: bytes) -> Response:
        if self._v1:
            return Response(b"", status_code=201, media_type=JSON_MEDIA)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        presence = body.get("presence") if isinstance(body, dict) else None
        if presence not in PRESENCES:
            return envelope(400, [[f"presence is not one of enum values: {','.join(PRESENCES)}"]])
        if instance.state != "open" or instance.socket_dead:
            return envelope(400, ["Connection Closed"])
        return json_response(201, {"presence": presence})

