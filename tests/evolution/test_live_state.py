"""Live state at scale (SPEC 3): `/metrics` where it answers, else probes under a budget."""

from __future__ import annotations

import time

import anyio
from evolution_helpers import MakeClient, StartSimulator
from structlog.testing import capture_logs

from reconciler.model import LiveState, ServerInventory, ServerRead
from reconciler.simulator import Simulator

PROBE = "/instance/connectionState/"


def live(read: ServerRead) -> dict[str, LiveState]:
    assert isinstance(read, ServerInventory), read
    return {i.name: i.live for i in read.instances}


def probed(sim: Simulator, since: int = 0) -> list[str]:
    return [p.removeprefix(PROBE) for _, p in sim.requests[since:] if p.startswith(PROBE)]


async def test_metrics_give_every_live_state_in_one_request(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.6", metrics_enabled=True)
    sim.add("up", state="open", stored_status="open")
    sim.add("reconnecting", state="connecting", stored_status="open")  # the column lags
    sim.add("abandoned-qr", state="close", stored_status="connecting")
    sim.add("db-only", state="open", loaded=False)  # no series: unknown
    read = await make_client(sim).read(want_live=["up", "reconnecting", "abandoned-qr"])
    assert live(read) == {"up": LiveState.OPEN, "reconnecting": LiveState.CONNECTING,
                          "abandoned-qr": LiveState.CLOSE, "db-only": LiveState.UNKNOWN}
    assert [p for _, p in sim.requests] == ["/", "/instance/fetchInstances", "/metrics"]


async def test_without_metrics_probes_fill_in_and_the_endpoint_is_not_asked_again(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("up", state="open", stored_status="open")
    sim.add("reconnecting", state="connecting", stored_status="open")
    client = make_client(sim)
    read = await client.read(want_live=["up", "reconnecting"])
    assert live(read) == {"up": LiveState.OPEN, "reconnecting": LiveState.CONNECTING}
    assert sorted(probed(sim)) == ["reconnecting", "up"]
    mark = len(sim.requests)
    again = await client.read(want_live=["up", "reconnecting"])
    assert live(again) == live(read), "fresh probe results are carried"
    assert [p for _, p in sim.requests[mark:]] == ["/", "/instance/fetchInstances"]


async def test_before_2_3_3_metrics_are_not_even_asked(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.2.0", metrics_enabled=True)
    sim.add("a", state="open")
    assert live(await make_client(sim).read(want_live=["a"])) == {"a": LiveState.OPEN}
    assert ("GET", "/metrics") not in sim.requests


async def test_broken_metrics_fall_back_to_probes(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.6", metrics_enabled=True)
    sim.add("a", state="open")
    sim.fault("metrics", status=200, body="<html>Sign in</html>")
    assert live(await make_client(sim).read(want_live=["a"])) == {"a": LiveState.OPEN}
    assert probed(sim) == ["a"]


async def test_a_change_in_the_listing_is_probed_at_once(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("a", state="open", owner_jid="551100@s.whatsapp.net")
    sim.add("b", state="open", owner_jid="551101@s.whatsapp.net")
    client = make_client(sim)
    await client.read(want_live=["a", "b"])
    sim.set_state("b", "close", code=401)  # the phone removed the device
    mark = len(sim.requests)
    read = await client.read(want_live=["a", "b"])
    assert probed(sim, mark) == ["b"]
    assert live(read) == {"a": LiveState.OPEN, "b": LiveState.CLOSE}
    sim.add("c", state="connecting")  # new since the last pass
    mark = len(sim.requests)
    assert live(await client.read(want_live=["a", "b", "c"]))["c"] == LiveState.CONNECTING
    assert "c" in probed(sim, mark)


async def test_a_silent_drop_shows_once_the_probe_is_due(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("a", state="open")
    client = make_client(sim, probe_interval=0.2)
    await client.read(want_live=["a"])
    sim.set_state("a", "connecting", stored_status="open")  # nothing changes in the listing
    assert live(await client.read(want_live=["a"])) == {"a": LiveState.OPEN}, "carried"
    await anyio.sleep(0.25)  # the probe interval passes
    assert live(await client.read(want_live=["a"])) == {"a": LiveState.CONNECTING}


async def test_probes_are_spread_over_passes_within_the_budget(
    sim: Simulator, make_client: MakeClient
) -> None:
    names = [f"clinic-{n:02d}" for n in range(30)]
    for name in names:
        sim.add(name, state="open")
    # 10 probes a second, at most 1 second's worth at once: 10 probes a pass
    client = make_client(sim, probe_rps=10.0, probe_burst=1.0)
    started = time.monotonic()
    first = live(await client.read(want_live=names[:5]))
    assert len(probed(sim)) == 10
    assert set(probed(sim)) >= set(names[:5]), "wanted instances first"
    assert sum(state == LiveState.OPEN for state in first.values()) == 10
    assert sum(state == LiveState.UNKNOWN for state in first.values()) == 20
    assert time.monotonic() - started >= 0.85, "paced at 10 a second"


async def test_probe_failures_are_unknown_never_not_connected(
    sim: Simulator, make_client: MakeClient
) -> None:
    sim.add("a", state="open")
    sim.add("b", state="open")
    sim.fault("connectionState", status=500)
    read = await make_client(sim).read(want_live=["a", "b"])
    assert live(read) == {"a": LiveState.UNKNOWN, "b": LiveState.UNKNOWN}
    sim.clear_faults()
    sim.fault("connectionState", status=200, body="{broken")
    read = await make_client(sim).read(want_live=["a"])
    assert live(read)["a"] == LiveState.UNKNOWN


async def test_a_budget_too_small_for_the_interval_is_reported(
    sim: Simulator, make_client: MakeClient
) -> None:
    names = [f"clinic-{n}" for n in range(6)]
    for name in names:
        sim.add(name, state="open")
    client = make_client(sim, probe_rps=20.0, probe_burst=0.1, probe_interval=0.3)
    with capture_logs() as logs:
        await client.read(want_live=names)  # 2 of 6 probed
        await anyio.sleep(0.35)  # the interval passes
        await client.read(want_live=names)
    warnings = [e for e in logs if e["event"] == "evolution.probe_budget_short"]
    assert len(warnings) == 1 and warnings[0]["overdue"] >= 2 and warnings[0]["wanted"] == 6
