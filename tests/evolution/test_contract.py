"""The simulator answers as real servers do.

Every request recorded from a real v2.3.6 server is replayed against a simulator seeded to the state
that server was in; the status must match and the body must have the same shape (the same keys in
the same order, the same JSON types, recursively) and the same values, except identifiers, tokens,
timestamps and URLs. The v1 and v2 payload files are covered the same way, each against the
version it documents.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from evolution_helpers import PAYLOADS, RECORDED, StartSimulator, load

from reconciler.simulator import Simulator

GLOBAL_KEY = "<GLOBAL_API_KEY>"
ALPHA_TOKEN = "767D4552-C53F-43CE-89FD-F9ADE80D7ED7"
VOLATILE = {"id", "instanceId", "token", "hash", "createdAt", "updatedAt", "disconnectionAt",
            "manager", "swagger", "serverUrl", "webhook_wa_business", "code", "base64"}
"""Values that differ between any two servers; their type is still checked."""

MEASUREMENTS = {
    "concurrency_probes.json": "timings of a real server (its create race is replayed below)",
    "load_200_instances_timing.json": "timings and memory of a real server",
    "restart_with_3_instances_probe.json": "log samples of a server restart, no request",
    "restart_with_203_instances_probe.json": "log samples of a server restart, no request",
    "zombie_reconnect_after_delete.json": "log samples of Baileys after a delete, no request",
    "fetchInstances_200_excerpt.json": "an excerpt of a 202-instance listing (replayed below)",
}


def assert_same(expected: Any, actual: Any, path: str = "body", exact: bool = True) -> None:
    """Same keys in the same order and the same JSON types, recursively; same values too, except
    under VOLATILE keys."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {type(actual).__name__}, expected an object"
        assert list(actual) == list(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for key, value in expected.items():
            assert_same(value, actual[key], f"{path}.{key}", exact and key not in VOLATILE)
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: {type(actual).__name__}, expected a list"
        assert len(actual) == len(expected), f"{path}: {len(actual)} items != {len(expected)}"
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{path}[{index}]", exact)
    else:
        assert type(actual) is type(expected), \
            f"{path}: {type(actual).__name__} != {type(expected).__name__}"
        if exact:
            assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def seed_v2_row(sim: Simulator, row: dict[str, Any]) -> None:
    """The simulated instance a Prisma row describes."""
    counts = row.get("_count") or {}
    sim.add(row["name"], id=row["id"], token=row["token"], state=row["connectionStatus"],
            owner_jid=row["ownerJid"], number=row["number"], profile_name=row["profileName"],
            profile_pic_url=row["profilePicUrl"], integration=row["integration"],
            disconnection_code=row["disconnectionReasonCode"],
            disconnection_object_raw=row["disconnectionObject"],
            disconnection_at=_time(row["disconnectionAt"]), created_at=_time(row["createdAt"]),
            updated_at=_time(row["updatedAt"]),
            counts=(counts.get("Message", 0), counts.get("Contact", 0), counts.get("Chat", 0)))


def seed_v1_item(sim: Simulator, item: dict[str, Any]) -> None:
    inner = item["instance"]
    integration = inner.get("integration") or {}
    fields: dict[str, Any] = {"id": inner["instanceId"], "state": inner["status"],
                              "owner_jid": inner.get("owner"),
                              "profile_name": inner.get("profileName"),
                              "profile_pic_url": inner.get("profilePictureUrl"),
                              "profile_status": inner.get("profileStatus", ""),
                              "integration": integration.get("integration")}
    if "apikey" in inner:
        fields["token"] = inner["apikey"]
    sim.add(inner["instanceName"], **fields)


# --- recorded requests of a real v2.3.6 server --------------------------------------------

def _inst(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields}


ALPHA = _inst("alpha", token=ALPHA_TOKEN)
BRAVO = _inst("bravo")
RECORDED_STATE: dict[str, list[dict[str, Any]]] = {
    "connect_golf.json": [_inst("golf")],
    "connectionState_alpha.json": [ALPHA],
    "connectionState_alpha_with_instance_token.json": [ALPHA],
    "connectionState_bravo_with_alpha_token.json": [ALPHA, BRAVO],
    "connectionState_golf_after_connect.json": [_inst("golf", state="connecting",
                                                      stored_status="close")],
    "connectionState_golf_connecting.json": [_inst("golf")],
    "connectionState_hotel.json": [_inst("hotel", state="connecting", stored_status="close")],
    "connectionState_missing.json": [ALPHA],
    "connectionState_missing_with_instance_token.json": [ALPHA],
    "create_alpha.json": [],
    "create_bravo.json": [ALPHA],
    "create_charlie.json": [ALPHA, BRAVO],
    "create_duplicate_name.json": [ALPHA, BRAVO],
    "create_empty_body.json": [ALPHA, BRAVO],
    "create_invalid_integration.json": [ALPHA],
    "create_missing_instanceName.json": [ALPHA],
    "create_not_json.json": [ALPHA],
    "create_with_custom_token.json": [ALPHA],
    "create_with_qrcode_true.json": [ALPHA],
    "create_without_integration.json": [ALPHA],
    "delete_charlie.json": [ALPHA, BRAVO, _inst("charlie")],
    "delete_charlie_again.json": [ALPHA, BRAVO],
    "delete_golf_after_connect_attempt.json": [_inst("golf", state="connecting",
                                                     stored_status="close")],
    "delete_hotel.json": [_inst("hotel", state="connecting", stored_status="close")],
    "delete_missing.json": [ALPHA],
    "fetchInstances_by_missing_name.json": [ALPHA],
    "logout_bravo.json": [ALPHA, BRAVO],
    "logout_golf_after_connect_attempt.json": [_inst("golf", state="connecting",
                                                     stored_status="close")],
    "logout_hotel.json": [_inst("hotel", state="connecting", stored_status="close")],
    "logout_missing.json": [ALPHA],
    "metrics_disabled.json": [ALPHA],
    "metrics_enabled.json": [_inst("metrics-a"), _inst("metrics-b"), _inst("metrics-c")],
    "no_apikey.json": [ALPHA],
    "root.json": [],
    "unknown_route.json": [ALPHA],
    "wrong_apikey.json": [ALPHA],
    "wrong_apikey_create.json": [ALPHA],
}
RECORDED_FILES = sorted(p.name for p in RECORDED.glob("*.json"))


async def replay(sim: Simulator, request: dict[str, Any]) -> httpx.Response:
    headers = {k: (sim.api_key if v == GLOBAL_KEY else v) for k, v in request["headers"].items()}
    body = request.get("body")
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=sim.url) as http:
        return await http.request(request["method"], request["path"], headers=headers,
                                  content=content)


def assert_metrics_text(expected: str, actual: str) -> None:
    server_url = re.compile(r'serverUrl="[^"]*"')
    assert server_url.sub("serverUrl", actual).splitlines() == \
        server_url.sub("serverUrl", expected).splitlines()


@pytest.mark.parametrize("name", RECORDED_FILES)
async def test_recorded_request(name: str, start_sim: StartSimulator) -> None:
    if name in MEASUREMENTS:
        pytest.skip(f"not a request/response pair: {MEASUREMENTS[name]}")
    recording = load(RECORDED / name)
    assert {"request", "status", "body"} <= set(recording), name
    sim = await start_sim(version="2.3.6", client_name="evolution_exchange",
                          metrics_enabled=name == "metrics_enabled.json")
    if isinstance(recording["body"], list) and name.startswith("fetchInstances"):
        for row in recording["body"]:
            seed_v2_row(sim, row)
    else:
        assert name in RECORDED_STATE, f"{name}: no seed state for this recording"
        for fields in RECORDED_STATE[name]:
            sim.add(**fields)
    response = await replay(sim, recording["request"])
    assert response.status_code == recording["status"], response.text
    if isinstance(recording["body"], str):
        assert_metrics_text(recording["body"], response.text)
        assert response.headers["content-type"] == recording["headers"]["Content-Type"]
    else:
        assert_same(recording["body"], response.json())
        assert response.headers["content-type"] == "application/json; charset=utf-8"


async def test_fetch_instances_over_202_instances(start_sim: StartSimulator) -> None:
    excerpt = load(RECORDED / "fetchInstances_200_excerpt.json")
    sim = await start_sim(version="2.3.6")
    for n in range(excerpt["items"]):
        sim.add(f"load-{n:03d}")
    async with httpx.AsyncClient(base_url=sim.url, headers={"apikey": sim.api_key}) as http:
        response = await http.get("/instance/fetchInstances")
    rows = response.json()
    assert response.status_code == excerpt["status"] and len(rows) == excerpt["items"]
    assert abs(len(response.content) - excerpt["body_bytes"]) < excerpt["body_bytes"] * 0.1
    for row in rows:
        assert_same(excerpt["body_excerpt"][0], row, exact=False)


async def test_five_concurrent_creates_of_one_name(start_sim: StartSimulator) -> None:
    recorded = load(RECORDED / "concurrency_probes.json")["create_same_name_5_concurrent"]
    sim = await start_sim(version="2.3.6")
    body = {"instanceName": "race-1", "integration": "WHATSAPP-BAILEYS", "qrcode": False}
    async with httpx.AsyncClient(base_url=sim.url, headers={"apikey": sim.api_key}) as http:
        answers = await asyncio.gather(*(http.post("/instance/create", json=body)
                                         for _ in recorded))
    assert sorted(a.status_code for a in answers) == sorted(r["status"] for r in recorded)
    for answer in answers:
        model = next(r["body"] for r in recorded if r["status"] == answer.status_code)
        model_keys = list(model.get("instance", {}))
        assert list(answer.json().get("instance", {})) == model_keys
        if answer.status_code == 403:
            assert_same(model, answer.json())


# --- the payload files of v1 and v2 ---------------------------------------------------------

@dataclass(frozen=True)
class Case:
    version: str
    method: str
    path: str
    status: int
    seed: tuple[str, ...] = ()
    """Names of the payload instances to seed (shop-01, shop-02, shop-03), plus `extra`."""
    extra: tuple[dict[str, Any], ...] = ()
    body: Any = None
    key: str | None = GLOBAL_KEY
    options: dict[str, Any] = field(default_factory=dict)


ALL = ("shop-01", "shop-02", "shop-03")
V2_CASES: dict[str, Case] = {
    "connect-already-open.json": Case("2.3.6", "GET", "/instance/connect/shop-01", 200, ALL),
    "connect-qrcode.json": Case("2.3.6", "GET", "/instance/connect/shop-02", 200,
                                extra=(_inst("shop-02", state="connecting", qr_count=1),),
                                options={"pairing": True}),
    "connectionState-close.json": Case("2.3.6", "GET", "/instance/connectionState/shop-03",
                                       200, ALL),
    "connectionState-connecting.json": Case("2.3.6", "GET",
                                            "/instance/connectionState/shop-02", 200, ALL),
    "connectionState-not-loaded.json": Case("2.3.6", "GET", "/instance/connectionState/shop-04",
                                            200, ALL, extra=(_inst("shop-04", loaded=False),)),
    "connectionState-notfound.json": Case("2.3.6", "GET", "/instance/connectionState/shop-99",
                                          404, ALL),
    "connectionState-open.json": Case("2.3.6", "GET", "/instance/connectionState/shop-01",
                                      200, ALL),
    "create-duplicate-name.json": Case("2.3.6", "POST", "/instance/create", 403, ALL,
                                       body={"instanceName": "shop-01",
                                             "integration": "WHATSAPP-BAILEYS"}),
    "create-invalid-integration.json": Case("2.3.6", "POST", "/instance/create", 400, ALL,
                                            body={"instanceName": "shop-04",
                                                  "integration": "WHATSAPP-WEB"}),
    "create-ok.json": Case("2.3.6", "POST", "/instance/create", 201, ALL,
                           body=load(PAYLOADS / "v2" / "create-request.json")),
    "create-ok-with-qrcode.json": Case("2.3.6", "POST", "/instance/create", 201, ALL,
                                       body={"instanceName": "shop-05",
                                             "integration": "WHATSAPP-BAILEYS", "qrcode": True},
                                       options={"pairing": True}),
    "delete-logout-failed-2.3.7-only.json": Case(
        "2.3.7", "DELETE", "/instance/delete/shop-01", 400,
        extra=(_inst("shop-01", state="open", socket_dead=True),)),
    "delete-notfound.json": Case("2.3.6", "DELETE", "/instance/delete/shop-99", 404, ALL),
    "delete-ok.json": Case("2.3.6", "DELETE", "/instance/delete/shop-03", 200, ALL),
    "delete-open-rejected-2.2.0-only.json": Case("2.2.0", "DELETE", "/instance/delete/shop-01",
                                                 400, ALL),
    "fetchInstances-2.2.x-item.json": Case("2.2.3", "GET", "/instance/fetchInstances", 200),
    "fetchInstances-empty.json": Case("2.3.6", "GET", "/instance/fetchInstances", 200),
    "fetchInstances-filtered-by-name.json": Case(
        "2.3.6", "GET", "/instance/fetchInstances?instanceName=shop-01", 200, ALL),
    "fetchInstances-notfound.json": Case(
        "2.3.6", "GET", "/instance/fetchInstances?instanceName=shop-99", 404, ALL),
    "fetchInstances.json": Case("2.3.6", "GET", "/instance/fetchInstances", 200, ALL),
    "logout-already-closed-2.4.0-rc-only.json": Case("2.4.0-rc2", "DELETE",
                                                     "/instance/logout/shop-03", 200, ALL),
    "logout-not-connected.json": Case("2.3.6", "DELETE", "/instance/logout/shop-03", 400, ALL),
    "logout-notfound.json": Case("2.3.6", "DELETE", "/instance/logout/shop-99", 404, ALL),
    "logout-ok.json": Case("2.3.6", "DELETE", "/instance/logout/shop-01", 200, ALL),
    "logout-socket-dead-2.3.7-only.json": Case(
        "2.3.7", "DELETE", "/instance/logout/shop-01", 500,
        extra=(_inst("shop-01", state="open", socket_dead=True),)),
    "malformed-json-body.json": Case("2.3.6", "POST", "/instance/create", 400, ALL,
                                     body=b"{instanceName: 'shop-04'}"),
    "metrics-2.3.3plus.prom": Case("2.3.6", "GET", "/metrics", 200, ALL, key=None,
                                   options={"metrics_enabled": True}),
    "restart-or-connect-error-200.json": Case("2.3.6", "POST", "/instance/restart/shop-03", 200,
                                              ALL),
    "route-not-found.json": Case("2.3.6", "PUT", "/instance/restart/shop-01", 404, ALL),
    "setPresence-ok.json": Case("2.3.6", "POST", "/instance/setPresence/shop-01", 201, ALL,
                                body={"presence": "available"}),
    "unauthorized.json": Case("2.3.6", "GET", "/instance/fetchInstances", 401, ALL,
                              key="wrong-key"),
    "validation-error.json": Case("2.3.6", "POST", "/instance/setPresence/shop-01", 400, ALL,
                                  body={"presence": "online"}),
}
V1_CASES: dict[str, Case] = {
    "connect-qrcode.json": Case("1.8.2", "GET", "/instance/connect/shop-03", 200, ALL,
                                options={"pairing": True}),
    "connectionState-close.json": Case("1.8.2", "GET", "/instance/connectionState/shop-03",
                                       200, ALL),
    "connectionState-notfound.json": Case("1.8.2", "GET", "/instance/connectionState/shop-99",
                                          404, ALL),
    "connectionState-open.json": Case("1.8.2", "GET", "/instance/connectionState/shop-01",
                                      200, ALL),
    "create-duplicate-name.json": Case("1.8.2", "POST", "/instance/create", 403, ALL,
                                       body={"instanceName": "shop-01", "token": "t"}),
    "create-ok.json": Case("1.8.2", "POST", "/instance/create", 201, ALL,
                           body=load(PAYLOADS / "v1" / "create-request.json")),
    "create-token-already-exists.json": Case(
        "1.8.2", "POST", "/instance/create", 400,
        extra=(_inst("shop-01", token="shop-04-secret-token"),),
        body=load(PAYLOADS / "v1" / "create-request.json")),
    "delete-notfound.json": Case("1.8.2", "DELETE", "/instance/delete/shop-99", 404, ALL),
    "delete-ok.json": Case("1.8.2", "DELETE", "/instance/delete/shop-03", 200, ALL),
    "delete-open-rejected-1.8.2-and-earlier.json": Case("1.8.2", "DELETE",
                                                        "/instance/delete/shop-01", 400, ALL),
    "fetchInstances-by-instance-token.json": Case("1.8.2", "GET", "/instance/fetchInstances",
                                                  200, ALL,
                                                  key="7F6E5D4C-3B2A-4190-8FED-CBA987654321"),
    "fetchInstances-by-name-global-key.json": Case(
        "1.8.2", "GET", "/instance/fetchInstances?instanceName=shop-03", 200, ALL),
    "fetchInstances-expose-false.json": Case("1.8.2", "GET", "/instance/fetchInstances", 200,
                                             ALL, options={"expose": False}),
    "fetchInstances-notfound-1.8.2.json": Case(
        "1.8.2", "GET", "/instance/fetchInstances?instanceName=shop-99", 404, ALL),
    "fetchInstances-notfound-v1.8-branch.json": Case(
        "1.8.7", "GET", "/instance/fetchInstances?instanceName=shop-99", 500, ALL),
    "fetchInstances.json": Case("1.8.2", "GET", "/instance/fetchInstances", 200, ALL),
    "logout-not-connected.json": Case("1.8.2", "DELETE", "/instance/logout/shop-03", 400, ALL),
    "logout-ok.json": Case("1.8.2", "DELETE", "/instance/logout/shop-01", 200, ALL),
    "restart-ok.json": Case("1.8.2", "PUT", "/instance/restart/shop-01", 200, ALL),
    "route-not-found.json": Case("1.8.2", "POST", "/instance/restart/shop-01", 404, ALL),
    "unauthorized.json": Case("1.8.2", "GET", "/instance/fetchInstances", 401, ALL,
                              key="wrong-key"),
}
NOT_RESPONSES = {
    "create-request.json": "a request body (sent by the create cases)",
    "disconnectionObject-variants.json": "decoded field values (test_parsers uses them)",
    "internal-error.json": "Evolution's database being down; only a fault could fake it",
}
WEBHOOK = "a webhook Evolution sends out; the reconciler polls and never receives webhooks"


def _skip_reason(name: str) -> str | None:
    if "webhook" in name:
        return WEBHOOK
    return NOT_RESPONSES.get(name)


def _payload_params() -> list[Any]:
    params = []
    for line, cases in (("v1", V1_CASES), ("v2", V2_CASES)):
        for path in sorted((PAYLOADS / line).iterdir()):
            params.append(pytest.param(path, cases.get(path.name), id=f"{line}/{path.name}"))
    return params


def _seed_payload_instances(sim: Simulator, path: Path, case: Case) -> None:
    if path.name == "fetchInstances-2.2.x-item.json":
        seed_v2_row(sim, load(path))
        return
    if sim.api_line == "v1":
        listing = load(path)
        if not (isinstance(listing, list) and listing and "instance" in listing[0]):
            listing = load(PAYLOADS / "v1" / "fetchInstances.json")
        for item in listing:
            if item["instance"]["instanceName"] in case.seed:
                seed_v1_item(sim, item)
    else:
        for row in load(PAYLOADS / "v2" / "fetchInstances.json"):
            if row["name"] in case.seed:
                seed_v2_row(sim, row)
    for fields in case.extra:
        sim.add(**fields)


@pytest.mark.parametrize(("path", "case"), _payload_params())
async def test_payload(path: Path, case: Case | None, start_sim: StartSimulator) -> None:
    reason = _skip_reason(path.name)
    if reason is not None:
        assert case is None
        pytest.skip(f"not a response the simulator produces: {reason}")
    assert case is not None, f"{path.name}: neither covered nor skipped with a reason"
    sim = await start_sim(version=case.version, **case.options)
    _seed_payload_instances(sim, path, case)
    headers = {} if case.key is None else {"apikey": case.key}
    response = await replay(sim, {"method": case.method, "path": case.path, "headers": headers,
                                   "body": case.body})
    assert response.status_code == case.status, response.text
    if path.suffix == ".prom":
        assert_metrics_text(await anyio.Path(path).read_text(), response.text)
        return
    expected = load(path)
    if path.name == "fetchInstances-2.2.x-item.json":
        expected = [expected]
    assert_same(expected, response.json())
