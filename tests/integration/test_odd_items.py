"""One odd item does not blind the daemon to a server (SPEC 3), end to end through `once`.

An item with a readable name and a `createdAt` that is not a timestamp sits among the others:
the server is still read, its real orphan is deleted, the odd items are left alone.
"""

from __future__ import annotations

from urllib.parse import unquote

from tests.integration.conftest import Env, EventTap, clinic_name

ENFORCE = {"RECONCILER_MODE": "enforce", "RECONCILER_ORPHAN_CONFIRMATIONS": "1"}


async def test_an_odd_item_does_not_stop_the_rest_of_the_server_converging(
        env: Env, events: EventTap) -> None:
    keeper, orphan, odd_orphan = clinic_name(), clinic_name(), clinic_name()
    env.sim.add(keeper, state="open", owner_jid="5511911112222@s.whatsapp.net")
    await env.add_row(keeper)
    env.sim.add("crm-bot", state="open", odd_fields={"createdAt": "yesterday"})
    env.sim.add(orphan, state="close")
    env.sim.add(odd_orphan, state="close", odd_fields={"createdAt": "not a date"})

    for _ in range(2):
        code, out = env.cli_json("once", **ENFORCE)
        assert code == 0, out
        assert out["servers"]["default"]["ok"] is True, out

    assert sorted(env.sim.names()) == sorted([keeper, "crm-bot", odd_orphan])
    deleted = {unquote(p).rsplit("/", 1)[-1] for m, p in env.sim.requests if m == "DELETE"}
    assert deleted == {orphan}
    [pending] = [d for d in out["drift"] if d["instance_name"] == odd_orphan]
    assert pending["kind"] == "orphan_pending"
    assert "createdAt 'not a date' is not an ISO-8601 timestamp" in pending["detail"]
    assert [d["kind"] for d in out["drift"] if d["instance_name"] == "crm-bot"] == ["unmanaged"]
    published = await events.drain(expect=1)
    assert [(e["type"], e["instance_name"]) for e in published] == [("instance.removed", orphan)]
