"""The incident's removal against every simulated version: a removal is reported only when real.

The executor's sequence (SPEC 4.3): log out if live, delete, then verify absence in an unfiltered
listing; only a verified absence may publish `instance.removed`.
"""

from __future__ import annotations

import anyio
import pytest
from evolution_helpers import MakeClient, StartSimulator

from reconciler.evolution.client import EvolutionClient
from reconciler.evolution.errors import EvolutionError
from reconciler.model import DeleteResult, LiveState, ServerInventory
from reconciler.simulator import VERSIONS

PHONE = "5511988887777@s.whatsapp.net"
ORPHAN = "clinic-4e8ddba1-ad52-4613-9a03-ec64636b3f6c-1763224272772"
REPLACEMENT = "clinic-4e8ddba1-ad52-4613-9a03-ec64636b3f6c-1763228000000"


async def remove(client: EvolutionClient, name: str, live: LiveState,
                 verify_for: float = 1.0) -> DeleteResult:
    """What the executor does for one confirmed orphan, within one pass."""
    try:
        if live == LiveState.OPEN:
            await client.logout(name)
        await client.delete(name)
    except EvolutionError:
        return DeleteResult.FAILED
    with anyio.move_on_after(verify_for):
        while name in await client.list_names():  # noqa: ASYNC110 (remote state)
            await anyio.sleep(0.02)
        return DeleteResult.VERIFIED
    return DeleteResult.UNVERIFIED


async def observe(client: EvolutionClient) -> dict[str, LiveState]:
    read = await client.read(want_live=[REPLACEMENT])
    assert isinstance(read, ServerInventory), read
    return {i.name: i.live for i in read.instances}


@pytest.mark.parametrize("version", VERSIONS)
async def test_incident_converges(
    start_sim: StartSimulator, make_client: MakeClient, version: str
) -> None:
    sim = await start_sim(version=version, metrics_enabled=True)
    sim.add(ORPHAN, state="open", owner_jid=PHONE)
    sim.add(REPLACEMENT, state="open", owner_jid=PHONE)
    client = make_client(sim)
    live = await observe(client)
    assert live == {ORPHAN: LiveState.OPEN, REPLACEMENT: LiveState.OPEN}, "both live: duplicate"
    assert await remove(client, ORPHAN, live[ORPHAN]) == DeleteResult.VERIFIED
    assert await observe(client) == {REPLACEMENT: LiveState.OPEN}


@pytest.mark.parametrize("version", ["1.8.2", "2.2.0"])
async def test_unknown_live_state_on_servers_that_refuse_open_deletes(
    start_sim: StartSimulator, make_client: MakeClient, version: str
) -> None:
    sim = await start_sim(version=version)
    sim.add(ORPHAN, state="open", owner_jid=PHONE)
    client = make_client(sim)
    assert await remove(client, ORPHAN, LiveState.UNKNOWN) == DeleteResult.FAILED
    assert ORPHAN in sim.names(), "nothing was removed, nothing may be published"


async def test_2_3_7_dead_socket_is_a_failed_removal(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.7")
    sim.add(ORPHAN, state="open", owner_jid=PHONE, socket_dead=True)
    client = make_client(sim)
    assert await remove(client, ORPHAN, LiveState.OPEN) == DeleteResult.FAILED
    assert ORPHAN in await client.list_names()


async def test_slow_cleanup_is_unverified_then_verified(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.6", delete_delay=0.5)
    sim.add(ORPHAN, state="open", owner_jid=PHONE)
    client = make_client(sim)
    assert await remove(client, ORPHAN, LiveState.OPEN, verify_for=0.05) == \
        DeleteResult.UNVERIFIED
    assert await remove(client, ORPHAN, LiveState.CLOSE, verify_for=3.0) == DeleteResult.VERIFIED
