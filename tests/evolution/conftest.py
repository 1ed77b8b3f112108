"""Fixtures for the Evolution adapter: simulators on loopback and clients pointed at them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from evolution_helpers import MakeClient, StartSimulator

from reconciler.evolution.client import EvolutionClient
from reconciler.observability import Metrics
from reconciler.settings import ServerConfig
from reconciler.simulator import Simulator


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSimulator]:
    """Start simulators (any version, any options); all are stopped after the test."""
    running: list[Simulator] = []

    async def start(**options: Any) -> Simulator:
        sim = Simulator(**options)
        await sim.__aenter__()
        running.append(sim)
        return sim

    yield start
    for sim in running:
        await sim.__aexit__(None, None, None)


@pytest.fixture
async def sim(start_sim: StartSimulator) -> Simulator:
    return await start_sim()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(["sim"])


@pytest.fixture
async def make_client(metrics: Metrics) -> AsyncIterator[MakeClient]:
    """Clients with test-sized waits: short timeout, near-instant retries, a generous probe rate."""
    clients: list[EvolutionClient] = []

    def make(sim: Simulator | None = None, *, url: str | None = None, api_key: str | None = None,
             version: str = "auto", name: str = "sim", **options: Any) -> EvolutionClient:
        settings: dict[str, Any] = {"timeout": 2.0, "retry_wait": 0.001, "probe_rps": 1000.0,
                                    "metrics": metrics}
        settings.update(options)
        server = ServerConfig(
            name=name,
            url=url or (sim.url if sim else "http://127.0.0.1:9"),
            api_key=api_key if api_key is not None else (sim.api_key if sim else "k"),
            version=version,
        )
        client = EvolutionClient(server, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()

