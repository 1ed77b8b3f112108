"""The bodies a simulated server sends, v1 and v2 alike, byte for byte as the real servers do.

Pure functions of the state (`state.SimState`): field order, casing and the fields each version
added follow the recordings (`shared/evolution-api/`: CONTRACT.md, recorded-v2.3.6/).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.responses import Response

from reconciler.simulator.state import INTEGRATIONS, STATES, SimInstance, SimState, iso

WELCOME = "Welcome to the Evolution API, it is working!"
DOCUMENTATION = "https://doc.evolution-api.com"
WHATSAPP_WEB_VERSION = "2.3000.1027934701"
LICENSE_REQUIRED_BODY = {
    "error": "service not activated",
    "code": "LICENSE_REQUIRED",
    "message": "Activate this Evolution API server at /manager to use the API",
}
JSON_MEDIA = "application/json; charset=utf-8"
_METRICS = "text/plain; charset=utf-8; version=0.0.4"


def json_response(status: int, body: Any) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type=JSON_MEDIA)


def envelope(status: int, message: Any) -> Response:
    return json_response(status, {"status": status, "error": HTTPStatus(status).phrase,
                                  "response": {"message": message}})


def success(message: str) -> Response:
    return json_response(
        200, {"status": "SUCCESS", "error": False, "response": {"message": message}})


def not_exist(name: str) -> Response:
    return envelope(404, [f'The "{name}" instance does not exist'])


def v8_json_error(raw: str, exc: json.JSONDecodeError | None) -> str:
    """Node's `SyntaxError` text as body-parser reports it, for the bodies clients send."""
    stripped = raw.lstrip()
    if exc is None:
        return f"Unexpected token '{stripped[:1]}', \"{raw}\" is not valid JSON"
    if exc.msg.startswith("Expecting property name"):
        return f"Expected property name or '}}' in JSON at position {exc.pos}"
    if exc.pos >= len(raw):
        return "Unexpected end of JSON input"
    return f"Unexpected token '{raw[exc.pos]}', \"{raw}\" is not valid JSON"


def root(sim: SimState, url: str) -> Response:
    """`GET /`: the version and `clientName` a client tells the lines apart by."""
    body: dict[str, Any] = {"status": 200, "message": WELCOME, "version": sim.version}
    if sim.api_line == "v1":
        body |= {"swagger": f"{url}/docs", "manager": f"{url}/manager",
                 "documentation": DOCUMENTATION}
        return json_response(200, body)
    body |= {"clientName": sim.client_name, "manager": f"{url}/manager",
             "documentation": DOCUMENTATION}
    if sim.at_least(2, 3, 0):
        body["whatsappWebVersion"] = WHATSAPP_WEB_VERSION
    return json_response(200, body)


def metrics(sim: SimState, instances: list[SimInstance], url: str) -> Response:
    """The Prometheus exposition of 2.3.3 and later (`PROMETHEUS_METRICS=true`)."""
    loaded = [i for i in instances if i.loaded]

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = [
        "# HELP evolution_environment_info Environment information",
        "# TYPE evolution_environment_info gauge",
        f'evolution_environment_info{{version="{esc(sim.version)}",'
        f'clientName="{esc(sim.client_name)}",serverUrl="{esc(url)}"}} 1',
        "# HELP evolution_instances_total Total number of instances",
        "# TYPE evolution_instances_total gauge",
        f"evolution_instances_total {len(loaded)}",
        "# HELP evolution_instance_up 1 if instance state is open, else 0",
        "# TYPE evolution_instance_up gauge",
        "# HELP evolution_instance_state Instance state as a labelled metric",
        "# TYPE evolution_instance_state gauge",
    ]
    for instance in loaded:
        labels = f'instance="{esc(instance.name)}",' \
                 f'integration="{esc(instance.integration or INTEGRATIONS[0])}"'
        state = instance.state if instance.state in STATES else "unknown"
        lines.append(f"evolution_instance_up{{{labels}}} {int(state == 'open')}")
        lines.append(f'evolution_instance_state{{{labels},state="{state}"}} 1')
    return Response(("\n".join(lines) + "\n").encode(), media_type=_METRICS,
                    headers={"Cache-Control": "no-cache, no-store, must-revalidate"})


def v2_row(sim: SimState, instance: SimInstance) -> dict[str, Any]:
    raw_object = instance.disconnection_object_raw
    if raw_object is None and instance.disconnection_object is not None:
        raw_object = json.dumps(instance.disconnection_object, separators=(",", ":"))
    created = iso(instance.created_at)
    row: dict[str, Any] = {
        "id": instance.id,
        "name": instance.name,
        "connectionStatus": instance.stored,
        "ownerJid": instance.owner_jid,
        "profileName": instance.profile_name,
        "profilePicUrl": instance.profile_pic_url,
        "integration": instance.integration or INTEGRATIONS[0],
        "number": instance.number,
        "businessId": None,
        "token": instance.token,
        "clientName": sim.client_name,
        "disconnectionReasonCode": instance.disconnection_code,
        "disconnectionObject": raw_object,
        "disconnectionAt": iso(instance.disconnection_at),
        "createdAt": created,
        "updatedAt": iso(instance.updated_at) or created,
        "Chatwoot": None,
        "Proxy": None,
        "Rabbitmq": None,
    }
    if sim.at_least(2, 3, 0):
        row["Nats"] = None
    setting: dict[str, Any] = {
        "id": instance.setting_id, "rejectCall": False, "msgCall": "",
        "groupsIgnore": False, "alwaysOnline": False, "readMessages": False,
        "readStatus": False, "syncFullHistory": False}
    if sim.at_least(2, 2, 1):
        setting["wavoipToken"] = ""
    setting |= {"createdAt": created, "updatedAt": created, "instanceId": instance.id}
    messages, contacts, chats = instance.counts
    row |= {"Sqs": None, "Websocket": None, "Setting": setting,
            "_count": {"Message": messages, "Contact": contacts, "Chat": chats}}
    return row | instance.odd_fields


def v1_item(sim: SimState, instance: SimInstance, url: str) -> dict[str, Any]:
    inner: dict[str, Any] = {"instanceName": instance.name, "instanceId": instance.id}
    if instance.state == "open":
        inner |= {"owner": instance.owner_jid,
                  "profileName": instance.profile_name or "not loaded",
                  "profilePictureUrl": instance.profile_pic_url,
                  "profileStatus": instance.profile_status}
    inner["status"] = instance.state
    if sim.expose:
        webhook = f"{url}/webhook/whatsapp/{instance.name}"
        integration: dict[str, Any] = (
            {"integration": instance.integration, "number": instance.number or "",
             "token": "", "webhook_wa_business": webhook}
            if instance.integration else {"token": instance.token,
                                          "webhook_wa_business": webhook})
        inner |= {"serverUrl": url, "apikey": instance.token,
                  "integration": integration}
    return {"instance": inner | instance.odd_fields}


def v2_created(sim: SimState, instance: SimInstance, fields: dict[str, Any], status: str,
               qrcode: dict[str, Any] | None) -> Response:
    """The 201 of a v2 `create`: the instance, its token, and the settings it started with."""
    webhook = fields.get("webhook")
    hooks: dict[str, Any] = {}
    if isinstance(webhook, dict) and webhook.get("url"):
        hooks = {"webhookUrl": webhook["url"],
                 "webhookByEvents": bool(webhook.get("byEvents", False)),
                 "webhookBase64": bool(webhook.get("base64", False))}
    answer: dict[str, Any] = {
        "instance": {"instanceName": instance.name, "instanceId": instance.id,
                     "integration": instance.integration, "webhookWaBusiness": None,
                     "accessTokenWaBusiness": "", "status": status},
        "hash": instance.token, "webhook": hooks, "websocket": {}, "rabbitmq": {}}
    if sim.at_least(2, 3, 0):
        answer["nats"] = {}
    settings: dict[str, Any] = {
        "rejectCall": False, "msgCall": "", "groupsIgnore": False, "alwaysOnline": False,
        "readMessages": False, "readStatus": False, "syncFullHistory": False}
    if sim.at_least(2, 2, 1):
        settings["wavoipToken"] = ""
    answer |= {"sqs": {}, "settings": settings}
    if qrcode is not None:
        answer["qrcode"] = qrcode
    return json_response(201, answer)


def v1_created(instance: SimInstance, fields: dict[str, Any],
               qrcode: dict[str, Any] | None) -> Response:
    """The 201 of a v1 `create`: snake_case settings, the token under `hash.apikey`."""
    webhook: dict[str, Any] = {}
    if isinstance(fields.get("webhook"), str):
        webhook = {"webhook": fields["webhook"],
                   "webhook_by_events": bool(fields.get("webhook_by_events", False)),
                   "webhook_base64": bool(fields.get("webhook_base64", False)),
                   "events": fields.get("events", [])}
    answer: dict[str, Any] = {
        "instance": {"instanceName": instance.name, "instanceId": instance.id,
                     "integration": fields.get("integration") or INTEGRATIONS[0],
                     "webhook_wa_business": None, "access_token_wa_business": "",
                     "status": "created"},
        "hash": {"apikey": instance.token},
        "webhook": webhook, "websocket": {}, "rabbitmq": {}, "sqs": {},
        "typebot": {"enabled": False},
        "settings": {"reject_call": False, "msg_call": "",
                     "groups_ignore": bool(fields.get("groups_ignore", True)),
                     "always_online": False, "read_messages": False, "read_status": False,
                     "sync_full_history": False, "wavoipToken": ""}}
    if qrcode is not None:
        answer["qrcode"] = qrcode
    return json_response(201, answer)

