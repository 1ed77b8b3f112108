"""`instanceId`: what tells a re-created instance from the one it replaced (SPEC 3).

v1 lists it inside the wrapper (`instance.instanceId`), v2 as the row's `id`. A delete and a create
under the same name give a new one, on both lines: the daemon's memory keys on that change.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from evolution_helpers import PAYLOADS, MakeClient, StartSimulator, load

from reconciler.evolution import v1, v2
from reconciler.model import ServerInventory
from reconciler.simulator import Simulator


def test_both_lines_read_the_instance_id_from_the_listing() -> None:
    from_v1 = v1.parse_listing(load(PAYLOADS / "v1" / "fetchInstances.json"), "s")
    from_v2 = v2.parse_listing(load(PAYLOADS / "v2" / "fetchInstances.json"), "s")
    assert [i.instance_id for i in from_v1.instances] == [
        "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f", "d2e3f4a5-b6c7-4d8e-9f0a-1b2c3d4e5f60",
        "e3f4a5b6-c7d8-4e9f-8a1b-2c3d4e5f6071"]
    assert [i.instance_id for i in from_v2.instances] == [
        "b4c7e2a1-5f3d-4e8a-9c21-7d0e6f1a2b3c", "0d9e8f7a-6b5c-4d3e-a2f1-0e9d8c7b6a50",
        "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"]


async def _create(sim: Simulator, name: str) -> str:
    body: dict[str, Any] = {"instanceName": name, "token": str(uuid.uuid4())}
    if sim.api_line == "v2":
        body["integration"] = "WHATSAPP-BAILEYS"
    async with httpx.AsyncClient(base_url=sim.url) as http:
        answer = await http.post("/instance/create", json=body, headers={"apikey": sim.api_key})
    assert answer.status_code == 201, answer.text
    instance_id: str = answer.json()["instance"]["instanceId"]
    return instance_id


async def _listed_id(client: Any, name: str) -> str | None:
    read = await client.read()
    assert isinstance(read, ServerInventory), read
    [listed] = [i for i in read.instances if i.name == name]
    instance_id: str | None = listed.instance_id
    return instance_id


@pytest.mark.parametrize("version", ["1.8.2", "1.8.7", "2.2.0", "2.3.6", "2.4.0-rc2"])
async def test_a_recreated_instance_has_a_new_instance_id(
    start_sim: StartSimulator, make_client: MakeClient, version: str
) -> None:
    sim = await start_sim(version=version)
    client = make_client(sim)
    name = "clinic-recreated"
    first = await _create(sim, name)
    assert await _listed_id(client, name) == first
    await client.delete(name)
    assert name not in await client.list_names()
    second = await _create(sim, name)
    assert second != first
    assert await _listed_id(client, name) == second


async def test_an_instance_added_again_by_a_test_gets_a_new_id(sim: Simulator) -> None:
    before = sim.add("again").id
    sim.remove("again")
    assert sim.add("again").id != before
