"""The parsers: v1 and v2 normalise to one domain type; disconnect reasons as in SPEC 4.4."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from evolution_helpers import PAYLOADS, load

from reconciler.evolution import v1, v2
from reconciler.evolution.errors import envelope_message, is_license_required
from reconciler.evolution.liveness import parse_connection_state, parse_metrics
from reconciler.evolution.wire import (
    ParseError,
    line_from_listing,
    line_from_root,
    normalise_number,
    version_tuple,
)
from reconciler.model import Disconnect, LiveState

V2_ROWS: list[dict[str, Any]] = load(PAYLOADS / "v2" / "fetchInstances.json")
V1_ITEMS: list[dict[str, Any]] = load(PAYLOADS / "v1" / "fetchInstances.json")
VARIANTS: dict[str, Any] = load(PAYLOADS / "v2" / "disconnectionObject-variants.json")


def v2_row(**changes: Any) -> dict[str, Any]:
    row = copy.deepcopy(V2_ROWS[0])
    row.update(changes)
    return row


def closed_with(code: int | None, obj: object) -> Disconnect | None:
    raw = json.dumps(obj) if isinstance(obj, dict) else obj
    observed = v2.parse_item(v2_row(connectionStatus="close", disconnectionReasonCode=code,
                                    disconnectionObject=raw), "s")
    return observed.disconnect


def test_v1_and_v2_normalise_one_instance_identically() -> None:
    row = v2_row(id="c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f")
    from_v2 = v2.parse_item(row, "s")
    from_v1 = v1.parse_item(V1_ITEMS[0], "s")
    assert from_v2.anomaly is None
    assert from_v1.name == from_v2.name == "shop-01"
    assert from_v1.number == from_v2.number == "5511987650001"
    assert from_v1.live == LiveState.OPEN, "v1 lists the in-memory state"
    assert from_v2.live == LiveState.UNKNOWN, "v2 lists a database column, not the session"
    # what only v2 records (creation time, clientName) aside, the two are the same value
    assert replace(from_v2, live=LiveState.OPEN, created_at=None, client_name=None) == from_v1


def test_v1_closed_instance_has_no_recorded_reason() -> None:
    closed = v1.parse_item(V1_ITEMS[2], "s")
    assert closed.stored_status == "close" and closed.live == LiveState.CLOSE
    assert closed.disconnect == Disconnect("connection_closed", terminal=False, code=None)
    assert closed.created_at is None


def test_v2_payload_rows() -> None:
    listing = v2.parse_listing(V2_ROWS, "br-1")
    open_, stale, removed = listing.instances
    assert [i.anomaly for i in listing.instances] == [None, None, None]
    assert open_.disconnect is None and open_.owner_jid == "5511987650001@s.whatsapp.net"
    assert stale.stored_status == "connecting"
    assert stale.disconnect is None, "a stale 401 counts only while the stored status is close"
    assert removed.disconnect == Disconnect("device_removed", terminal=True, code=401)
    assert removed.client_name == "evolution_exchange"
    assert removed.created_at is not None and removed.created_at.isoformat().startswith(
        "2025-08-28T17:45:09.233")
    assert {i.server for i in listing.instances} == {"br-1"}


def test_v2_2_2_row_without_nats_parses() -> None:
    item = load(PAYLOADS / "v2" / "fetchInstances-2.2.x-item.json")
    observed = v2.parse_item(item, "s")
    assert observed.name == "shop-01" and observed.number == "5511987650001"


@pytest.mark.parametrize(("code", "obj", "reason", "terminal"), [
    (401, VARIANTS["device_removed_from_phone__401"], "device_removed", True),
    (401, VARIANTS["wire_example_string"], "device_removed", True),
    (401, VARIANTS["api_logout_or_DEL_INSTANCE_expiry__401"], "logged_out", True),
    (401, VARIANTS["server_rejected_credentials_at_login__401"], "logged_out", True),
    (401, None, "logged_out", True),
    (402, None, "temporarily_banned", True),
    (403, VARIANTS["forbidden_banned__403"], "forbidden", True),
    (406, None, "banned", True),
    (408, None, "connection_lost", False),
    (428, None, "connection_closed", False),
    (440, None, "connection_replaced", False),
    (500, None, "bad_session", False),
    (515, None, "restart_required", False),
    (411, None, "unknown_411", False),
    (None, None, "connection_closed", False),
])
def test_disconnect_reasons(code: int | None, obj: object, reason: str, terminal: bool) -> None:
    assert closed_with(code, obj) == Disconnect(reason, terminal, code)


def test_disconnect_object_may_arrive_decoded() -> None:
    row = v2_row(connectionStatus="close", disconnectionReasonCode=401,
                 disconnectionObject=VARIANTS["device_removed_from_phone__401"])
    assert v2.parse_item(row, "s").disconnect == Disconnect("device_removed", True, 401)


@pytest.mark.parametrize("broken", ['{"error": {"data":', "[1, 2]", "not json at all"])
def test_broken_disconnect_object_is_reported_and_gives_no_terminal_reason(broken: str) -> None:
    row = v2_row(connectionStatus="close", disconnectionReasonCode=401, disconnectionObject=broken)
    observed = v2.parse_item(row, "s")
    assert observed.disconnect == Disconnect("connection_closed", False, None)
    assert observed.anomaly is not None and "disconnectionObject" in observed.anomaly


@pytest.mark.parametrize("status", ["open", "connecting"])
def test_stale_disconnect_fields_are_ignored_unless_closed(status: str) -> None:
    row = v2_row(connectionStatus=status, disconnectionReasonCode=403,
                 disconnectionObject=json.dumps(VARIANTS["forbidden_banned__403"]))
    assert v2.parse_item(row, "s").disconnect is None


@pytest.mark.parametrize(("jid", "number"), [
    ("5511987650001@s.whatsapp.net", "5511987650001"),
    ("5511987650001:12@s.whatsapp.net", "5511987650001"),
    ("5511987650001", "5511987650001"),
    ("+55 11 98765-0001@s.whatsapp.net", "5511987650001"),
    ("@s.whatsapp.net", None),
    (None, None),
    ("", None),
])
def test_owner_jid_normalisation(jid: str | None, number: str | None) -> None:
    assert normalise_number(jid) == number


@pytest.mark.parametrize(("body", "message"), [
    (load(PAYLOADS / "v2" / "unauthorized.json"), "Unauthorized"),
    (load(PAYLOADS / "v2" / "logout-not-connected.json"),
     'The "shop-03" instance is not connected'),
    (load(PAYLOADS / "v2" / "validation-error.json"),
     "presence is not one of enum values: unavailable,available,composing,recording,paused"),
    (load(PAYLOADS / "v1" / "fetchInstances-notfound-v1.8-branch.json"),
     'Instance "shop-99" not found'),
    (load(PAYLOADS / "v2" / "restart-or-connect-error-200.json"), "[object Object]"),
    ({"status": 400, "error": "x", "response": {"message": ["a", ["b", "c"]]}}, "a; b; c"),
    ({"error": "service not activated", "code": "LICENSE_REQUIRED"},
     "LICENSE_REQUIRED: service not activated"),
    ([1, 2], None),
    ({"status": 500}, None),
])
def test_error_envelope_messages(body: object, message: str | None) -> None:
    assert envelope_message(body) == message


def test_license_gate_is_recognised() -> None:
    assert is_license_required({"error": "service not activated", "code": "LICENSE_REQUIRED"})
    assert not is_license_required(load(PAYLOADS / "v2" / "internal-error.json"))


@pytest.mark.parametrize(("body", "problem"), [
    ({"status": 200}, "not a list"),
    ([{"connectionStatus": "open"}], "name"),
    (["shop-01"], "not an object"),
])
def test_v2_listing_that_cannot_be_parsed(body: object, problem: str) -> None:
    with pytest.raises(ParseError, match=problem):
        v2.parse_listing(body, "s")


def test_v1_single_object_answer() -> None:
    single = load(PAYLOADS / "v1" / "fetchInstances-by-name-global-key.json")
    listing = v1.parse_listing(single, "s", filtered=True)
    assert [i.name for i in listing.instances] == ["shop-03"]
    with pytest.raises(ParseError, match="single object"):
        v1.parse_listing(single, "s")


@pytest.mark.parametrize("body", [
    [{"instance": {"status": "open"}}],
    [{"instanceName": "x", "status": "open"}],
    {"error": True, "message": ["Instance \"x\" not found"]},
])
def test_v1_listing_that_cannot_be_parsed(body: object) -> None:
    with pytest.raises(ParseError):
        v1.parse_listing(body, "s")


def test_names_only() -> None:
    assert v2.names(V2_ROWS) == ["shop-01", "shop-02", "shop-03"]
    assert v1.names(V1_ITEMS) == ["shop-01", "shop-02", "shop-03"]
    with pytest.raises(ParseError):
        v2.names([{"id": "x"}])


def test_telling_v1_from_v2() -> None:
    assert line_from_root(load(PAYLOADS.parent / "recorded-v2.3.6" / "root.json")["body"]) == "v2"
    assert line_from_root({"version": "1.8.2", "swagger": "x"}) == "v1"
    assert line_from_root({"swagger": "x"}) == "v1"
    assert line_from_root({"clientName": "c"}) == "v2"
    assert line_from_root({"status": 200}) is None
    assert line_from_listing(V1_ITEMS) == "v1"
    assert line_from_listing(V2_ROWS) == "v2"
    assert line_from_listing([]) is None


@pytest.mark.parametrize(("text", "parsed"), [
    ("2.3.6", (2, 3, 6)), ("2.4.0-rc2", (2, 4, 0)), ("1.8", (1, 8, 0)), ("v2.2.1", (2, 2, 1)),
    ("latest", None), (None, None),
])
def test_versions(text: str | None, parsed: tuple[int, int, int] | None) -> None:
    assert version_tuple(text) == parsed


def test_metrics_exposition() -> None:
    text = (PAYLOADS / "v2" / "metrics-2.3.3plus.prom").read_text()
    assert parse_metrics(text) == {"shop-01": LiveState.OPEN, "shop-02": LiveState.CONNECTING,
                                   "shop-03": LiveState.CLOSE}


def test_metrics_escapes_conflicts_and_foreign_text() -> None:
    text = "\n".join([
        "evolution_instances_total 3",
        'evolution_instance_state{instance="a \\"quoted\\" \\\\ name",integration="X",'
        'state="open"} 1',
        'evolution_instance_state{instance="torn",integration="X",state="open"} 1',
        'evolution_instance_state{instance="torn",integration="X",state="close"} 1',
        'evolution_instance_state{instance="zero",integration="X",state="open"} 0',
        'evolution_instance_state{exported_instance="relabelled",state="unknown"} 1',
    ])
    assert parse_metrics(text) == {'a "quoted" \\ name': LiveState.OPEN,
                                   "relabelled": LiveState.UNKNOWN}
    assert parse_metrics("<html>login</html>") is None
    assert parse_metrics("# HELP evolution_instances_total x\nevolution_instances_total 0\n") == {}


@pytest.mark.parametrize(("name", "state"), [
    ("connectionState-open.json", LiveState.OPEN),
    ("connectionState-connecting.json", LiveState.CONNECTING),
    ("connectionState-close.json", LiveState.CLOSE),
    ("connectionState-not-loaded.json", LiveState.UNKNOWN),
    ("connectionState-notfound.json", LiveState.UNKNOWN),
])
def test_connection_state_bodies(name: str, state: LiveState) -> None:
    assert parse_connection_state(load(PAYLOADS / "v2" / name)) == state
