"""The API key appears in no log line, metric, error or read result."""

from __future__ import annotations

import json

import pytest
from evolution_helpers import MakeClient, StartSimulator
from structlog.testing import capture_logs

from reconciler.evolution.errors import EvolutionError
from reconciler.observability import Metrics
from reconciler.settings import ServerConfig

KEY = "sk-live-7d1f0c2a9b8e4d3c"


async def test_the_api_key_never_leaks(
    start_sim: StartSimulator, make_client: MakeClient, metrics: Metrics
) -> None:
    sim = await start_sim(api_key=KEY, version="2.3.7")
    sim.add("open", state="open", owner_jid="5511@s.whatsapp.net")
    sim.add("zombie", state="open", socket_dead=True)
    sim.add("broken", disconnection_code=401, disconnection_object_raw="{")
    outputs: list[str] = []
    with capture_logs() as logs:
        client = make_client(sim, api_key=KEY, timeout=0.3)
        outputs.append(repr(await client.read(want_live=["open", "zombie", "broken"])))
        # a proxy that echoes the request headers into its error page
        sim.fault("fetchInstances", status=500, body={"error": True,
                                                      "message": f"upstream said apikey={KEY}"})
        outputs.append(repr(await client.read()))
        sim.fault("fetchInstances", status=502, body=f"<html>apikey: {KEY}</html>")
        outputs.append(repr(await client.read()))
        sim.fault("fetchInstances", delay=1.0)
        outputs.append(repr(await client.read()))
        sim.clear_faults()
        sim.fault("delete", status=400, body={"status": 400, "error": "Bad Request",
                                              "response": {"message": [f"bad key {KEY}"]}})
        for call, name in ((client.logout, "zombie"), (client.delete, "zombie")):
            with pytest.raises(EvolutionError) as failed:
                await call(name)
            outputs += [str(failed.value), repr(failed.value), failed.value.message]
        outputs.append(repr(await make_client(sim, api_key="wrong-" + KEY).read()))
        outputs.append(repr(await make_client(url="http://127.0.0.1:9", api_key=KEY).read()))
    outputs.append(json.dumps(logs, default=str))
    outputs.append(metrics.exposition().decode())
    outputs.append(repr(ServerConfig("s", sim.url, KEY)))
    assert len(logs) > 5 and any("apikey" in o for o in outputs), "the scenario produced output"
    leaking = [o for o in outputs if KEY in o]
    assert leaking == []
