"""Every quirk of real servers that a reconciler meets, through the client, over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from evolution_helpers import MakeClient, StartSimulator, eventually
from structlog.testing import capture_logs

from reconciler.evolution.errors import EvolutionError, NeedsLogout, OperatorError
from reconciler.model import (
    Disconnect,
    LiveState,
    ObservedInstance,
    ServerInventory,
    ServerRead,
    ServerReadError,
)
from reconciler.simulator import Simulator, api_logout_object, device_removed_object

PHONE = "5511987650001@s.whatsapp.net"
NOW = datetime.now(UTC)


def inventory(read: ServerRead) -> ServerInventory:
    assert isinstance(read, ServerInventory), read
    return read


def by_name(read: ServerRead) -> dict[str, ObservedInstance]:
    return {i.name: i for i in inventory(read).instances}


async def test_disconnect_object_is_a_json_string(sim: Simulator, make_client: MakeClient) -> None:
    sim.add("removed", owner_jid=PHONE, disconnection_code=401,
            disconnection_object=device_removed_object(NOW))
    sim.add("logged-out", disconnection_code=401,
            disconnection_object=api_logout_object("logged-out", NOW))
    sim.add("banned", disconnection_code=403, disconnection_object={"error": {"data": None}})
    reasons = {n: i.disconnect for n, i in by_name(await make_client(sim).read()).items()}
    assert reasons == {"removed": Disconnect("device_removed", True, 401),
                       "logged-out": Disconnect("logged_out", True, 401),
                       "banned": Disconnect("forbidden", True, 403)}


async def test_broken_disconnect_object_is_reported_not_fatal(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("broken", disconnection_code=401, disconnection_object_raw='{"error": {"data": nul')
    sim.add("fine")
    with capture_logs() as logs:
        read = await make_client(sim).read()
    assert by_name(read)["broken"].disconnect == Disconnect("connection_closed", False, None)
    warnings = [e for e in logs if e["event"] == "evolution.item_anomaly"]
    assert len(warnings) == 1 and warnings[0]["instance"] == "broken"
    assert "disconnectionObject" in warnings[0]["anomaly"]


async def test_disconnect_fields_are_never_cleared(sim: Simulator, make_client: MakeClient) -> None:
    sim.add("clinic", state="close", owner_jid=PHONE, disconnection_code=401,
            disconnection_object=device_removed_object(NOW))
    client = make_client(sim)
    sim.set_state("clinic", "open")  # re-paired: Evolution keeps the old 401 on the row
    reconnected = by_name(await client.read())["clinic"]
    assert reconnected.stored_status == "open" and reconnected.disconnect is None
    sim.set_state("clinic", "close")  # a close with no new code: the stale 401 comes back
    closed = by_name(await client.read())["clinic"]
    assert closed.disconnect == Disconnect("device_removed", True, 401)


@pytest.mark.parametrize(("status", "body", "expected"), [
    (401, None, "Unauthorized"),
    (404, {"status": 404, "error": "Not Found",
           "response": {"message": ["Cannot GET /instance/fetchInstances"]}},
     "Cannot GET /instance/fetchInstances"),
    (400, {"status": 400, "error": "Bad Request",
           "response": {"message": [["instanceName is not of a type(s) string"]]}},
     "instanceName is not of a type(s) string"),
    (500, {"status": 500, "error": "Internal Server Error",
           "response": {"message": "\nInvalid `prisma.instance.findMany()` invocation: "
                                   "Can't reach database server"}},
     "Can't reach database server"),
])
async def test_error_envelope_message_in_every_shape(
    sim: Simulator, make_client: MakeClient, status: int, body: dict[str, Any] | None,
    expected: str
) -> None:
    if status == 401:
        read = await make_client(sim, api_key="not-the-key").read()
    else:
        sim.fault("fetchInstances", status=status, body=body)
        read = await make_client(sim, retry_attempts=1).read()
    assert isinstance(read, ServerReadError)
    assert expected in read.error and f"HTTP {status}" in read.error


async def test_error_true_inside_a_200_body(sim: Simulator, make_client: MakeClient) -> None:
    sim.add("a")
    sim.fault("fetchInstances", status=200, body={"error": True, "message": "[object Object]"})
    read = await make_client(sim).read()
    assert isinstance(read, ServerReadError)
    assert "HTTP 200 carrying an error: [object Object]" in read.error
    assert not read.operator_error
    with pytest.raises(EvolutionError, match="carrying an error"):
        await make_client(sim).list_names()


async def test_v1_single_object_answer_to_a_listing_is_refused(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="1.8.2")
    sim.add("shop-03")
    single = {"instance": {"instanceName": "shop-03", "instanceId": "x", "status": "close"}}
    sim.fault("fetchInstances", status=200, body=single)
    read = await make_client(sim).read()
    assert isinstance(read, ServerReadError) and "single object" in read.error
    sim.clear_faults()
    assert list(by_name(await make_client(sim).read())) == ["shop-03"]


async def test_connection_state_404_and_not_loaded_are_unknown(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("zombie", state="open", loaded=False)  # a row Evolution never loaded (F14)
    sim.add("gone", state="open")
    sim.add("healthy", state="open")
    sim.fault("connectionState", status=404, body={
        "status": 404, "error": "Not Found",
        "response": {"message": ['The "gone" instance does not exist']}}, times=1)
    client = make_client(sim, max_concurrency=1)
    read = await client.read(want_live=["gone", "zombie", "healthy"])
    live = {n: i.live for n, i in by_name(read).items()}
    assert live["zombie"] == LiveState.UNKNOWN
    assert sorted(live.values()) == sorted([LiveState.UNKNOWN, LiveState.UNKNOWN, LiveState.OPEN])


async def test_logout_of_a_closed_instance_counts_as_done(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    for version in ("2.3.6", "1.8.2", "2.4.0-rc2"):  # 400 "not connected"; 2.4.0: 200
        sim = await start_sim(version=version)
        sim.add("closed")
        await make_client(sim).logout("closed")
        assert ("DELETE", "/instance/logout/closed") in sim.requests


async def test_logout_and_delete_of_a_missing_instance_count_as_done(
    sim: Simulator, make_client: MakeClient
) -> None:
    client = make_client(sim)
    await client.logout("never-existed")
    await client.delete("never-existed")
    assert sim.requests[-2:] == [("DELETE", "/instance/logout/never-existed"),
                                 ("DELETE", "/instance/delete/never-existed")]


@pytest.mark.parametrize("version", ["1.8.2", "2.2.0"])
async def test_delete_of_an_open_instance_needs_a_logout_first(
    start_sim: StartSimulator, make_client: MakeClient, version: str
) -> None:
    sim = await start_sim(version=version)
    sim.add("orphan", state="open", owner_jid=PHONE)
    client = make_client(sim)
    with pytest.raises(EvolutionError) as refused:
        await client.delete("orphan")
    assert isinstance(refused.value, NeedsLogout) and refused.value.status == 400
    assert not isinstance(refused.value, OperatorError)
    assert "orphan" in await client.list_names()
    await client.logout("orphan")
    await client.delete("orphan")
    assert "orphan" not in await client.list_names()


async def test_2_3_7_delete_fails_after_a_failed_logout(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.7")
    sim.add("zombie", state="open", owner_jid=PHONE, socket_dead=True)
    client = make_client(sim)
    with pytest.raises(EvolutionError, match="Connection Closed") as logout:
        await client.logout("zombie")
    assert logout.value.status == 500
    with pytest.raises(EvolutionError, match=r"\[object Object\]") as delete:
        await client.delete("zombie")
    assert delete.value.status == 400 and not isinstance(delete.value, NeedsLogout)
    assert "zombie" in await client.list_names(), "2.3.7 keeps an instance it cannot log out"
    assert sim.requests.count(("DELETE", "/instance/logout/zombie")) == 1, "500 is not retried"


async def test_2_4_0_deletes_despite_a_dead_socket(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.4.0-rc2")
    sim.add("zombie", state="open", socket_dead=True)
    client = make_client(sim)
    await client.delete("zombie")
    assert "zombie" not in await client.list_names()


async def test_delete_answers_before_cleanup_so_absence_is_verified(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.6", delete_delay=0.3)
    sim.add("orphan", state="open", owner_jid=PHONE)
    client = make_client(sim)
    await client.delete("orphan")
    assert "orphan" in await client.list_names(), "v2 answers 200 before its cleanup"
    await client.delete("orphan")  # repeated inside the window: 200 again, harmless

    async def gone() -> bool:
        return "orphan" not in await client.list_names()

    await eventually(gone)
    await client.delete("orphan")  # after cleanup: 404, still done


async def test_v1_delete_is_immediate(start_sim: StartSimulator, make_client: MakeClient) -> None:
    sim = await start_sim(version="1.8.7", delete_delay=5.0)
    sim.add("orphan", state="open")
    client = make_client(sim)
    await client.delete("orphan")  # 1.8.4+ logs an open instance out itself
    assert "orphan" not in await client.list_names()


async def test_license_required_is_an_operator_error(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.4.0-rc2", licensed=False)
    sim.add("a")
    client = make_client(sim)
    read = await client.read()
    assert isinstance(read, ServerReadError) and read.operator_error
    assert "LICENSE_REQUIRED" in read.error
    assert client.version == "2.4.0-rc2", "GET / still answers behind the gate"
    assert sim.requests.count(("GET", "/instance/fetchInstances")) == 1, "not retried"
    for call in (client.logout, client.delete):
        with pytest.raises(EvolutionError) as gated:
            await call("a")
        assert isinstance(gated.value, OperatorError) and gated.value.status == 503


async def test_html_error_page_from_a_proxy(sim: Simulator, make_client: MakeClient) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    sim.fault("fetchInstances", status=502, body=page)
    client = make_client(sim, retry_attempts=2)
    read = await client.read()
    assert isinstance(read, ServerReadError) and not read.operator_error
    assert "HTML page" in read.error and "502" in read.error
    assert sim.requests.count(("GET", "/instance/fetchInstances")) == 2, "a 502 is retried"
    sim.fault("fetchInstances", status=200, body="<!doctype html><title>Manager</title>")
    read = await client.read()
    assert isinstance(read, ServerReadError) and read.operator_error, "200 HTML: wrong URL"


@pytest.mark.parametrize("body", ['[{"id": "7a6b", "name": "shop', "Service Unavailable", ""])
async def test_non_json_or_truncated_body(
    sim: Simulator, make_client: MakeClient, body: str
) -> None:
    sim.add("a")
    sim.fault("fetchInstances", status=200, body=body)
    read = await make_client(sim).read()
    assert isinstance(read, ServerReadError) and "not JSON" in read.error


async def test_body_cut_off_in_transfer(sim: Simulator, make_client: MakeClient) -> None:
    sim.add("a")
    sim.fault("fetchInstances", status=200, body='[{"id": "x", "name": "a"}]', truncate_at=12)
    read = await make_client(sim).read()
    assert isinstance(read, ServerReadError) and "RemoteProtocolError" in read.error


async def test_oversized_body_is_capped(sim: Simulator, make_client: MakeClient) -> None:
    for n in range(20):
        sim.add(f"clinic-{n}")
    read = await make_client(sim, max_body=4096).read()
    assert isinstance(read, ServerReadError) and "4096 byte cap" in read.error
    sim.fault("fetchInstances", status=200, body=b"[" + b" " * 10_000 + b"]")
    read = await make_client(sim, max_body=4096).read()
    assert isinstance(read, ServerReadError) and "cap" in read.error


async def test_names_are_url_encoded(sim: Simulator, make_client: MakeClient) -> None:
    odd = "clinic a/b?c#d%e"
    sim.add(odd, state="open")
    client = make_client(sim)
    assert by_name(await client.read(want_live=[odd]))[odd].live == LiveState.OPEN
    await client.delete(odd)
    assert odd not in await client.list_names()
    assert ("DELETE", f"/instance/delete/{odd}") in sim.requests


async def test_connect_restart_and_create_are_never_called(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("a", state="open")
    sim.add("b")
    client = make_client(sim)
    await client.read(want_live=["a", "b"])
    await client.logout("a")
    await client.delete("a")
    await client.list_names()
    touched = {path.split("/")[2] for _, path in sim.requests if path.startswith("/instance/")}
    assert touched <= {"fetchInstances", "connectionState", "logout", "delete"}
