"""The simulator itself: guard order, tokens, version gates, faults, threads, the command line."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import anyio
import httpx
import pytest
from evolution_helpers import StartSimulator

from reconciler.model import Policy
from reconciler.simulator import Simulator, seed


async def call(sim: Simulator, method: str, path: str, key: str | None = "global",
               body: object = None) -> httpx.Response:
    headers = {} if key is None else {"apikey": sim.api_key if key == "global" else key}
    async with httpx.AsyncClient(base_url=sim.url) as http:
        return await http.request(method, path, headers=headers, json=body)


async def test_guards_run_before_the_key_check(sim: Simulator) -> None:
    sim.add("taken")
    missing = await call(sim, "DELETE", "/instance/delete/nosuch", key="bad")
    assert missing.status_code == 404
    taken = await call(sim, "POST", "/instance/create", key="bad",
                       body={"instanceName": "taken", "integration": "WHATSAPP-BAILEYS"})
    assert taken.status_code == 403
    assert (await call(sim, "DELETE", "/instance/delete/taken", key="bad")).status_code == 401
    assert "taken" in sim.names()


async def test_instance_token_unlocks_only_its_own_instance(sim: Simulator) -> None:
    own = sim.add("own", token="OWN-TOKEN", state="open")
    sim.add("other", state="open")
    state = await call(sim, "GET", "/instance/connectionState/own", key=own.token)
    assert state.json() == {"instance": {"instanceName": "own", "state": "open"}}
    assert (await call(sim, "GET", "/instance/connectionState/other", key=own.token)
            ).status_code == 401
    listing = await call(sim, "GET", "/instance/fetchInstances", key=own.token)
    assert [row["name"] for row in listing.json()] == ["own"]
    assert (await call(sim, "GET", "/instance/fetchInstances", key="nobody")).status_code == 401


async def test_license_gate_spares_only_the_root(start_sim: StartSimulator) -> None:
    sim = await start_sim(version="2.4.0-rc2", licensed=False, metrics_enabled=True)
    sim.add("a")
    assert (await call(sim, "GET", "/", key=None)).status_code == 200
    for method, path in (("GET", "/instance/fetchInstances"), ("GET", "/metrics"),
                         ("DELETE", "/instance/delete/a")):
        answer = await call(sim, method, path)
        assert answer.status_code == 503 and answer.json()["code"] == "LICENSE_REQUIRED"
    assert sim.names() == ["a"]


@pytest.mark.parametrize(("version", "enabled", "served"), [
    ("2.3.2", True, False), ("2.3.3", True, True), ("2.3.6", False, False),
    ("2.4.0-rc2", True, True), ("1.8.7", True, False),
])
async def test_metrics_exist_from_2_3_3_when_enabled(
    start_sim: StartSimulator, version: str, enabled: bool, served: bool
) -> None:
    sim = await start_sim(version=version, metrics_enabled=enabled)
    answer = await call(sim, "GET", "/metrics", key=None)
    assert answer.status_code == (200 if served else 404)


@pytest.mark.parametrize(("version", "nats", "wavoip", "web_version"), [
    ("2.2.0", False, False, False), ("2.2.3", False, True, False), ("2.3.0", True, True, True),
])
async def test_listing_fields_follow_the_version(
    start_sim: StartSimulator, version: str, nats: bool, wavoip: bool, web_version: bool
) -> None:
    sim = await start_sim(version=version)
    sim.add("a")
    row = (await call(sim, "GET", "/instance/fetchInstances")).json()[0]
    assert ("Nats" in row) is nats and ("wavoipToken" in row["Setting"]) is wavoip
    root = (await call(sim, "GET", "/", key=None)).json()
    assert ("whatsappWebVersion" in root) is web_version


async def test_stored_status_lags_the_session(sim: Simulator) -> None:
    sim.add("a", state="open")
    sim.set_state("a", "connecting", stored_status="open")
    row = (await call(sim, "GET", "/instance/fetchInstances")).json()[0]
    state = (await call(sim, "GET", "/instance/connectionState/a")).json()
    assert row["connectionStatus"] == "open" and state["instance"]["state"] == "connecting"
    sim.set_state("a", "close", code=401)
    row = (await call(sim, "GET", "/instance/fetchInstances")).json()[0]
    assert row["connectionStatus"] == "close" and row["disconnectionReasonCode"] == 401
    assert row["disconnectionAt"] is not None


async def test_faults_expire_and_clear(sim: Simulator) -> None:
    sim.fault("root", status=500, times=2)
    codes = [(await call(sim, "GET", "/", key=None)).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    sim.fault("unknown", status=418)
    assert (await call(sim, "GET", "/nowhere")).status_code == 418
    sim.clear_faults()
    assert (await call(sim, "GET", "/nowhere")).json()["response"]["message"] == [
        "Cannot GET /nowhere"]
    with pytest.raises(ValueError, match="endpoint"):
        sim.fault("fetchinstances", status=500)


async def test_stopping_releases_hanging_requests() -> None:
    sim = Simulator()
    await sim.__aenter__()
    sim.fault("root", hang=True)
    answers: list[int] = []

    async def hang() -> None:
        answers.append((await call(sim, "GET", "/", key=None)).status_code)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(hang)
            while ("GET", "/") not in sim.requests:  # noqa: ASYNC110 (the server's log)
                await anyio.sleep(0.01)
            await sim.__aexit__(None, None, None)
    assert answers == [503]


def test_serving_from_a_thread() -> None:
    sim = Simulator(version="1.8.7")
    url = sim.start_in_thread()
    try:
        sim.add("a", state="open")
        answer = httpx.get(f"{url}/instance/fetchInstances", headers={"apikey": sim.api_key})
        assert answer.json()[0]["instance"]["instanceName"] == "a"
    finally:
        sim.stop_thread()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def _serving(url: str, process: subprocess.Popen[bytes], within: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        try:
            return httpx.get(f"{url}/", timeout=1)
        except httpx.ConnectError:
            time.sleep(0.05)
    pytest.fail("the simulator did not come up")


def test_command_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler.simulator", "--port", str(port),
         "--api-key", "cli-key", "--version", "2.3.7", "--metrics", "--seed", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _serving(url, process).json()["version"] == "2.3.7"
        rows = httpx.get(f"{url}/instance/fetchInstances", headers={"apikey": "cli-key"}).json()
        assert len(rows) == 5
        assert httpx.get(f"{url}/metrics").status_code == 200
    finally:
        process.terminate()
        process.wait(10)


def test_seeded_instances_are_managed_names() -> None:
    sim = Simulator()
    names = seed(sim, 10)
    pattern = Policy().managed_pattern
    assert len(set(names)) == 10 and all(pattern.match(n) for n in names)
    states = {instance.state for n in names if (instance := sim.get(n))}
    assert states == {"open", "close"}
    assert all(re.fullmatch(r"[0-9a-f-]{36}", n.split("-", 1)[1][:36]) for n in names)
