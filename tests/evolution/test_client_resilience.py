"""Timeouts, hangs, retries, operator errors, metrics, the concurrency limit, several servers."""

from __future__ import annotations

import socket

import anyio
import httpx
import pytest
from evolution_helpers import MakeClient, StartSimulator, count

from reconciler.evolution.errors import EvolutionError, OperatorError, TransientError
from reconciler.model import ServerInventory, ServerRead, ServerReadError
from reconciler.observability import Metrics
from reconciler.simulator import Simulator

FETCH = ("GET", "/instance/fetchInstances")


async def test_a_transient_error_is_retried(
    sim: Simulator, make_client: MakeClient, metrics: Metrics
) -> None:
    sim.add("a")
    sim.fault("fetchInstances", status=500, times=2)
    read = await make_client(sim, retry_attempts=3).read()
    assert isinstance(read, ServerInventory) and [i.name for i in read.instances] == ["a"]
    assert sim.requests.count(FETCH) == 3
    assert count(metrics, "fetchInstances", "500") == 2
    assert count(metrics, "fetchInstances", "200") == 1


async def test_retries_give_up_after_the_last_attempt(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.fault("fetchInstances", status=503)
    read = await make_client(sim, retry_attempts=3).read()
    assert isinstance(read, ServerReadError) and not read.operator_error
    assert read.stage == "read_observed" and "HTTP 503" in read.error
    assert sim.requests.count(FETCH) == 3


async def test_timeout(sim: Simulator, make_client: MakeClient, metrics: Metrics) -> None:
    sim.fault("fetchInstances", delay=0.5, times=1)
    read = await make_client(sim, timeout=0.2, retry_attempts=1).read()
    assert isinstance(read, ServerReadError) and "no answer within 0.2 s" in read.error
    assert count(metrics, "fetchInstances", "timeout") == 1
    assert isinstance(await make_client(sim, timeout=0.2, retry_attempts=1).read(),
                      ServerInventory), "the next pass reads again"


async def test_slow_answer_within_the_timeout(sim: Simulator, make_client: MakeClient) -> None:
    sim.fault("fetchInstances", delay=0.1)
    assert isinstance(await make_client(sim, timeout=1.0).read(), ServerInventory)


async def test_a_hanging_server_is_abandoned(sim: Simulator, make_client: MakeClient) -> None:
    sim.fault("root", hang=True)
    with anyio.fail_after(3):
        read = await make_client(sim, timeout=0.2, retry_attempts=2).read()
    assert isinstance(read, ServerReadError) and "root: no answer" in read.error
    assert sim.requests.count(("GET", "/")) == 2


async def test_wrong_api_key_is_an_operator_error_not_retried(
    sim: Simulator, make_client: MakeClient
) -> None:
    read = await make_client(sim, api_key="wrong-key").read()
    assert isinstance(read, ServerReadError) and read.operator_error
    assert "rejected the API key" in read.error
    assert sim.requests.count(FETCH) == 1


async def test_wrong_url_is_an_operator_error(sim: Simulator, make_client: MakeClient) -> None:
    read = await make_client(sim, url=f"{sim.url}/evolution").read()
    assert isinstance(read, ServerReadError) and read.operator_error
    assert "HTTP 404" in read.error and "wrong URL" in read.error
    client = make_client(sim, url=f"{sim.url}/evolution")
    for call in (client.logout, client.delete):
        with pytest.raises(EvolutionError) as wrong:
            await call("a")  # "Cannot DELETE ..." is a missing route, not a missing instance
        assert isinstance(wrong.value, OperatorError)


async def test_unreachable_server(make_client: MakeClient, metrics: Metrics) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    read = await make_client(url=f"http://127.0.0.1:{closed_port}", retry_attempts=2).read()
    assert isinstance(read, ServerReadError) and "ConnectError" in read.error
    assert not read.operator_error
    assert count(metrics, "root", "error") == 2
    with pytest.raises(EvolutionError) as refused:
        await make_client(url=f"http://127.0.0.1:{closed_port}").delete("a")
    assert isinstance(refused.value, TransientError)


async def test_root_failure_fails_the_read(sim: Simulator, make_client: MakeClient) -> None:
    sim.fault("root", status=200, body=["not", "an", "object"])
    read = await make_client(sim).read()
    assert isinstance(read, ServerReadError) and "root" in read.error
    assert FETCH not in sim.requests, "nothing is decided without knowing the server"


async def test_deletes_are_repeated_after_gateway_errors_only(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("a")
    sim.add("b", state="open")
    sim.fault("delete", status=502, times=1)
    await make_client(sim).delete("a")
    assert sim.requests.count(("DELETE", "/instance/delete/a")) == 2
    assert "a" not in sim.names()
    sim.fault("logout", status=500, body={"status": 500, "error": "Internal Server Error",
                                          "response": {"message": ["Error: Connection Closed"]}})
    with pytest.raises(EvolutionError, match="Connection Closed"):
        await make_client(sim).logout("b")
    assert sim.requests.count(("DELETE", "/instance/logout/b")) == 1


async def test_a_200_error_body_from_logout_is_a_failure(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("a", state="open")
    sim.fault("logout", status=200, body={"error": True, "message": "[object Object]"})
    with pytest.raises(EvolutionError, match="HTTP 200"):
        await make_client(sim).logout("a")


async def test_every_request_is_counted_and_timed(
    sim: Simulator, make_client: MakeClient, metrics: Metrics
) -> None:
    sim.add("a", state="open")
    client = make_client(sim)
    await client.read(want_live=["a"])
    await client.logout("a")
    await client.delete("a")
    for endpoint, code in (("root", "200"), ("fetchInstances", "200"), ("metrics", "404"),
                           ("connectionState", "200"), ("logout", "200"), ("delete", "200")):
        assert count(metrics, endpoint, code) == 1, endpoint
        observed = metrics.registry.get_sample_value(
            "evolution_reconciler_evolution_request_duration_seconds_count",
            {"server": "sim", "endpoint": endpoint})
        assert observed == 1, endpoint
    exposition = metrics.exposition().decode()
    assert 'endpoint="connectionState"' in exposition and '"a"' not in exposition


class CountingTransport(httpx.AsyncHTTPTransport):
    """Real HTTP, counting the requests in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().handle_async_request(request)
        finally:
            self.in_flight -= 1


async def test_concurrency_per_server_is_limited(sim: Simulator, make_client: MakeClient) -> None:
    names = [f"clinic-{n}" for n in range(12)]
    for name in names:
        sim.add(name, state="open")
    sim.fault("connectionState", delay=0.05)
    transport = CountingTransport()
    client = make_client(sim, transport=transport, max_concurrency=3)
    read = await client.read(want_live=names)
    assert isinstance(read, ServerInventory)
    assert transport.peak == 3


async def test_one_failing_server_does_not_stop_the_others(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    healthy = await start_sim(client_name="br-1")
    broken = await start_sim(client_name="br-2")
    healthy.add("a")
    broken.fault("fetchInstances", hang=True)
    clients = [make_client(healthy, name="br-1"), make_client(broken, name="br-2", timeout=0.3,
                                                              retry_attempts=1)]
    reads: list[ServerRead] = [ServerReadError("?", "read_observed", "not read")] * 2

    async def read(i: int) -> None:
        reads[i] = await clients[i].read()

    with anyio.fail_after(3):
        async with anyio.create_task_group() as group:
            for i in range(2):
                group.start_soon(read, i)
    assert isinstance(reads[0], ServerInventory) and reads[0].server == "br-1"
    assert isinstance(reads[1], ServerReadError) and reads[1].server == "br-2"


async def test_client_name_of_each_server_is_exposed(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    first = await start_sim(client_name="evolution_exchange")
    second = await start_sim(client_name="evolution_exchange")
    a, b = make_client(first, name="a"), make_client(second, name="b")
    read_a, read_b = await a.read(), await b.read()
    assert isinstance(read_a, ServerInventory) and isinstance(read_b, ServerInventory)
    assert a.client_name == b.client_name == read_a.client_name == "evolution_exchange"


async def test_api_line_is_detected_or_pinned(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    v1 = await start_sim(version="1.8.2")
    v1.add("old", state="open", owner_jid="5511@s.whatsapp.net")
    detected = make_client(v1)
    read = await detected.read(want_live=["old"])
    assert isinstance(read, ServerInventory) and read.api_line == "v1" == detected.api_line
    assert read.version == "1.8.2" and read.client_name is None
    assert [p for _, p in v1.requests] == ["/", "/instance/fetchInstances"], \
        "v1 lists live states: no /metrics, no probes"
    v1.fault("root", status=200, body={"status": 200, "message": "hello"})
    by_shape = await make_client(v1).read()
    assert isinstance(by_shape, ServerInventory) and by_shape.api_line == "v1"
    wrongly_pinned = await make_client(v1, version="v2").read()
    assert isinstance(wrongly_pinned, ServerReadError) and "(v2)" in wrongly_pinned.error
    v2 = await start_sim(version="2.3.6")
    pinned = await make_client(v2, version="v2").read()
    assert isinstance(pinned, ServerInventory) and pinned.api_line == "v2"
    with pytest.raises(ValueError, match="version"):
        make_client(v2, version="v3")
