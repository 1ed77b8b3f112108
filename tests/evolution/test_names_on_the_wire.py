"""Instance names on the wire (SPEC 3): one encoded path segment each, dot segments included.

Asserted on the request targets the simulator received over loopback HTTP, and on which instance
the simulator decoded them to: a dot segment sent raw is normalised away by the HTTP client
(`/instance/delete/..` becomes `/instance`), so `.` must leave as `%2E` and `..` as `%2E%2E`.
"""

from __future__ import annotations

import httpx
import pytest
from evolution_helpers import MakeClient, StartSimulator

from reconciler.evolution.wire import path_segment
from reconciler.model import LiveState, ServerInventory

ODD_NAMES = {
    ".": "%2E",
    "..": "%2E%2E",
    "...": "...",
    ".hidden": ".hidden",
    "%2E": "%252E",
    "a/..": "a%2F..",
    "a/b?c#d%e": "a%2Fb%3Fc%23d%25e",
    " spaced ": "%20spaced%20",
    "clínica": "cl%C3%ADnica",
}


@pytest.mark.parametrize(("name", "segment"), ODD_NAMES.items())
def test_one_encoder_for_every_path_segment(name: str, segment: str) -> None:
    assert path_segment(name) == segment


@pytest.mark.parametrize("version", ["2.3.6", "1.8.7"])
async def test_every_instance_path_carries_the_encoded_name(
    start_sim: StartSimulator, make_client: MakeClient, version: str
) -> None:
    sim = await start_sim(version=version)
    for name in ODD_NAMES:
        sim.add(name, state="open")
    client = make_client(sim)
    read = await client.read(want_live=list(ODD_NAMES))
    assert isinstance(read, ServerInventory), read
    assert {i.name: i.live for i in read.instances} == dict.fromkeys(ODD_NAMES, LiveState.OPEN)
    for name, segment in ODD_NAMES.items():
        await client.logout(name)
        instance = sim.get(name)
        assert instance is not None and instance.state == "close", f"{name!r} was not logged out"
        await client.delete(name)
        assert sim.get(name) is None, f"{name!r} was not deleted"
        expected = [("DELETE", f"/instance/logout/{segment}"),
                    ("DELETE", f"/instance/delete/{segment}")]
        if version.startswith("2."):
            expected.insert(0, ("GET", f"/instance/connectionState/{segment}"))
        sent = [r for r in sim.raw_requests if r[1].rsplit("/", 1)[-1] == segment]
        assert sent == expected, name
    assert sim.names() == []
    assert not [t for _, t in sim.raw_requests if t in ("/instance", "/instance/delete",
                                                         "/instance/logout",
                                                         "/instance/connectionState")]


async def test_simulator_decodes_one_segment_as_express_does(
    start_sim: StartSimulator,
) -> None:
    sim = await start_sim()
    for name in (".", "..", "a/b"):
        sim.add(name, state="open")
    headers = {"apikey": sim.api_key}
    async with httpx.AsyncClient(base_url=sim.url, headers=headers) as http:
        for name, segment in ((".", "%2E"), ("..", "%2E%2E"), ("..", "%2e%2e"), ("a/b", "a%2Fb")):
            answer = await http.get(f"/instance/connectionState/{segment}")
            assert answer.json() == {"instance": {"instanceName": name, "state": "open"}}
        raw_slash = await http.get("/instance/connectionState/a/b")
    assert raw_slash.status_code == 404, "an unencoded slash is two segments: no route"
    assert raw_slash.json()["response"]["message"] == ["Cannot GET /instance/connectionState/a/b"]
