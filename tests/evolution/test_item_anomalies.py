"""One odd item does not blind the daemon to a server (SPEC 3), on both API lines.

An item whose name cannot be read makes the listing unusable. Any other odd field is treated as
absent, and the item is kept with an `anomaly` saying what was odd, for the planner to decide
conservatively on it alone.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from evolution_helpers import PAYLOADS, MakeClient, StartSimulator, load
from structlog.testing import capture_logs

from reconciler.evolution import v1, v2
from reconciler.evolution.wire import ParseError
from reconciler.model import Disconnect, LiveState, ObservedInstance, ServerInventory

V2_ROWS: list[dict[str, Any]] = load(PAYLOADS / "v2" / "fetchInstances.json")
V1_ITEMS: list[dict[str, Any]] = load(PAYLOADS / "v1" / "fetchInstances.json")
DEVICE_REMOVED = V2_ROWS[2]["disconnectionObject"]


def v2_rows(**changes: Any) -> list[dict[str, Any]]:
    """The recorded listing with the last row (`shop-03`, closed by device_removed) changed."""
    rows = copy.deepcopy(V2_ROWS)
    rows[2].update(changes)
    return rows


def v1_items(**changes: Any) -> list[dict[str, Any]]:
    """The recorded v1 listing with `shop-01` (open, paired) changed."""
    items = copy.deepcopy(V1_ITEMS)
    items[0]["instance"].update(changes)
    return items


def odd_one(listing: tuple[ObservedInstance, ...], name: str) -> ObservedInstance:
    others = [i for i in listing if i.name != name]
    assert [i.anomaly for i in others] == [None] * len(others), "the others stay clean"
    [odd] = [i for i in listing if i.name == name]
    assert odd.anomaly is not None
    return odd


@pytest.mark.parametrize(("changes", "says", "absent"), [
    ({"createdAt": "yesterday"}, "createdAt 'yesterday' is not an ISO-8601 timestamp",
     {"created_at": None}),
    ({"createdAt": 1756403109}, "createdAt", {"created_at": None}),
    ({"connectionStatus": "refused"}, "connectionStatus 'refused'",
     {"stored_status": None, "disconnect": None}),
    ({"connectionStatus": None}, "connectionStatus", {"stored_status": None, "disconnect": None}),
    ({"ownerJid": 5511987650003}, "ownerJid", {"owner_jid": None, "number": None}),
    ({"disconnectionReasonCode": "401"}, "disconnectionReasonCode",
     {"disconnect": Disconnect("connection_closed", terminal=False)}),
    ({"disconnectionReasonCode": True}, "disconnectionReasonCode",
     {"disconnect": Disconnect("connection_closed", terminal=False)}),
    ({"disconnectionObject": '{"error": {"data": nul'}, "disconnectionObject",
     {"disconnect": Disconnect("connection_closed", terminal=False)}),
    ({"disconnectionObject": "[1, 2]"}, "disconnectionObject",
     {"disconnect": Disconnect("connection_closed", terminal=False)}),
    ({"disconnectionObject": 42}, "disconnectionObject",
     {"disconnect": Disconnect("connection_closed", terminal=False)}),
    ({"id": 7}, "id", {"instance_id": None}),
    ({"clientName": ["evolution"]}, "clientName", {"client_name": None}),
])
def test_v2_odd_field_is_kept_absent_and_marked(
    changes: dict[str, Any], says: str, absent: dict[str, Any]
) -> None:
    odd = odd_one(v2.parse_listing(v2_rows(**changes), "s").instances, "shop-03")
    assert odd.anomaly is not None and says in odd.anomaly
    assert {field: getattr(odd, field) for field in absent} == absent


def test_v2_every_odd_field_is_named() -> None:
    rows = v2_rows(createdAt="yesterday", ownerJid=5)
    odd = odd_one(v2.parse_listing(rows, "s").instances, "shop-03")
    assert odd.anomaly is not None and "createdAt" in odd.anomaly and "ownerJid" in odd.anomaly
    assert odd.disconnect == Disconnect("device_removed", terminal=True, code=401), \
        "the fields that were fine still count"


def test_v2_broken_stale_disconnect_object_is_still_odd() -> None:
    rows = v2_rows(connectionStatus="open", disconnectionObject="not json")
    odd = odd_one(v2.parse_listing(rows, "s").instances, "shop-03")
    assert odd.disconnect is None and odd.stored_status == "open"


@pytest.mark.parametrize("item", [
    {"connectionStatus": "open"},
    {"name": None, "connectionStatus": "open"},
    {"name": 17, "connectionStatus": "open"},
    "shop-04",
])
def test_v2_an_item_without_a_readable_name_makes_the_listing_unusable(item: object) -> None:
    with pytest.raises(ParseError, match="item 3"):
        v2.parse_listing([*copy.deepcopy(V2_ROWS), item], "s")


@pytest.mark.parametrize(("changes", "says", "absent"), [
    ({"status": "refused"}, "status 'refused'",
     {"stored_status": None, "live": LiveState.UNKNOWN, "disconnect": None}),
    ({"status": None}, "status", {"stored_status": None, "live": LiveState.UNKNOWN}),
    ({"status": 1}, "status", {"stored_status": None, "live": LiveState.UNKNOWN}),
    ({"owner": 5511987650001}, "owner", {"owner_jid": None, "number": None}),
    ({"instanceId": 7}, "instanceId", {"instance_id": None}),
])
def test_v1_odd_field_is_kept_absent_and_marked(
    changes: dict[str, Any], says: str, absent: dict[str, Any]
) -> None:
    odd = odd_one(v1.parse_listing(v1_items(**changes), "s").instances, "shop-01")
    assert odd.anomaly is not None and says in odd.anomaly
    assert {field: getattr(odd, field) for field in absent} == absent


def test_v1_missing_status_is_odd() -> None:
    items = copy.deepcopy(V1_ITEMS)
    del items[0]["instance"]["status"]
    odd = odd_one(v1.parse_listing(items, "s").instances, "shop-01")
    assert odd.live is LiveState.UNKNOWN and odd.anomaly is not None and "status" in odd.anomaly


@pytest.mark.parametrize("item", [
    {"instance": {"status": "open"}},
    {"instance": {"instanceName": 17, "status": "open"}},
    {"instanceName": "shop-04", "status": "open"},
    "shop-04",
])
def test_v1_an_item_without_a_readable_name_makes_the_listing_unusable(item: object) -> None:
    with pytest.raises(ParseError, match="item 3"):
        v1.parse_listing([*copy.deepcopy(V1_ITEMS), item], "s")


def test_clean_payloads_have_no_anomaly() -> None:
    for listing in (v2.parse_listing(V2_ROWS, "s"), v1.parse_listing(V1_ITEMS, "s")):
        assert [i.anomaly for i in listing.instances] == [None, None, None]


# --- over HTTP ---------------------------------------------------------------------------------


async def test_v2_server_with_an_odd_item_is_read_and_the_item_reported(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.6")
    sim.add("foreign", odd_fields={"createdAt": "yesterday"})
    sim.add("broken", disconnection_code=401, disconnection_object_raw='{"error": {"data": nul')
    sim.add("fine")
    with capture_logs() as logs:
        read = await make_client(sim).read()
    assert isinstance(read, ServerInventory), read
    seen = {i.name: i for i in read.instances}
    assert seen["foreign"].created_at is None
    assert seen["broken"].disconnect == Disconnect("connection_closed", terminal=False)
    assert seen["fine"].anomaly is None and seen["fine"].created_at is not None
    reported = sorted((e["instance"], e["anomaly"]) for e in logs
                      if e["event"] == "evolution.item_anomaly")
    assert [name for name, _ in reported] == ["broken", "foreign"], "once per item per read"
    assert "createdAt 'yesterday'" in reported[1][1]
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "evolution.item_anomaly")


async def test_v1_server_with_an_odd_item_is_read(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="1.8.2")
    sim.add("foreign", state="open", odd_fields={"status": "refused"})
    sim.add("fine", state="open")
    read = await make_client(sim).read()
    assert isinstance(read, ServerInventory), read
    seen = {i.name: i for i in read.instances}
    assert (seen["foreign"].live, seen["foreign"].anomaly) == (
        LiveState.UNKNOWN, "status 'refused' is not open, connecting or close")
    assert (seen["fine"].live, seen["fine"].anomaly) == (LiveState.OPEN, None)


async def test_an_unreadable_name_still_fails_the_read(
    start_sim: StartSimulator, make_client: MakeClient
) -> None:
    sim = await start_sim(version="2.3.6")
    sim.add("nameless", odd_fields={"name": None})
    sim.add("fine")
    read = await make_client(sim).read()
    assert not isinstance(read, ServerInventory)
    assert "item" in read.error and "name" in read.error


def test_anomaly_text_is_bounded() -> None:
    rows = v2_rows(createdAt="x" * 5000)
    odd = odd_one(v2.parse_listing(rows, "s").instances, "shop-03")
    assert odd.anomaly is not None and len(odd.anomaly) < 200
    assert json.dumps(odd.anomaly)
