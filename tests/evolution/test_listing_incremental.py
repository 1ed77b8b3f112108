"""The incremental listing parse gives what the full parse gives, listing after listing.

`ListingCache` parses only the items whose bytes changed since the last listing; the full path
decodes the whole body and parses every item. Hypothesis draws sequences of listings from small
pools (few names, odd field values, items that are not objects or have no name, the API line
switching) so that unchanged, changed, moved, repeated and broken items all meet the cache.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reconciler.evolution.v1 as v1
import reconciler.evolution.v2 as v2
from reconciler import planner
from reconciler.evolution.listing import Items, ListingCache, split
from reconciler.evolution.wire import V1, V2, Listing, ParseError
from reconciler.model import (
    DesiredInstance,
    DesiredState,
    Memory,
    ObservedInstance,
    Policy,
    ServerInventory,
)

SECRET = "api-key-0123"
NAMES = ("clinic-a", "clinic-b", "clinic-c", "support", f"odd-{SECRET}")
ODD = (None, 7, True, "", [1], {"x": SECRET}, f"text {SECRET}")
DEVICE_REMOVED = {"error": {"data": {"content": [{"tag": "conflict",
                                                  "attrs": {"type": "device_removed"}}]}}}


def scrub(instance: ObservedInstance) -> ObservedInstance:
    """What the client does to an anomaly: the API key masked."""
    if instance.anomaly is None:
        return instance
    return replace(instance, anomaly=instance.anomaly.replace(SECRET, "***"))


def values(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, good, st.sampled_from(ODD))


v2_items = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES)},
    optional={
        "connectionStatus": values(st.sampled_from(["open", "close", "connecting"])),
        "ownerJid": values(st.sampled_from(["5511999990001@s.whatsapp.net",
                                            "5511999990002:3@s.whatsapp.net"])),
        "disconnectionReasonCode": values(st.sampled_from([401, 428, 515])),
        "disconnectionObject": values(st.sampled_from([DEVICE_REMOVED,
                                                       json.dumps(DEVICE_REMOVED)])),
        "createdAt": values(st.sampled_from(["2025-11-15T16:45:00.000Z", "not a time"])),
        "id": values(st.sampled_from(["id-1", "id-2"])),
        "clientName": values(st.just("evolution_exchange")),
        "Setting": st.just({"rejectCall": False}),
    },
)
v1_items = st.builds(
    lambda inner: {"instance": inner},
    st.fixed_dictionaries(
        {"instanceName": st.sampled_from(NAMES)},
        optional={"status": values(st.sampled_from(["open", "close", "connecting"])),
                  "owner": values(st.just("5511999990001@s.whatsapp.net")),
                  "instanceId": values(st.just("id-1"))}),
)
broken_items = st.sampled_from([1, "item", None, [], {"connectionStatus": "open"},
                                {"name": 5}, {"instance": {"status": "open"}}])


@st.composite
def listings(draw: st.DrawFn) -> tuple[str, list[object]]:
    line = draw(st.sampled_from([V2, V2, V2, V1]))
    good = v2_items if line == V2 else v1_items
    items = draw(st.lists(st.one_of(good, good, good, good, good, good, broken_items),
                          max_size=8))
    return line, items


@st.composite
def sequences(draw: st.DrawFn) -> list[tuple[str, list[object]]]:
    """Listings where each next one mostly keeps the previous one's items, in any order."""
    result = [draw(listings())]
    for _ in range(draw(st.integers(1, 4))):
        line, previous = result[-1]
        kept = draw(st.lists(st.sampled_from(previous), max_size=len(previous))) \
            if previous else []
        line_now, fresh = draw(listings())
        if line_now != line:
            kept = []
        result.append((line_now, draw(st.permutations(kept + fresh))))
    return result


def full_parse(line: str, items: list[object]) -> Listing | str:
    body = json.loads(encoded(items))
    try:
        parsed = v1.parse_listing(body, "s1") if line == V1 else v2.parse_listing(body, "s1")
    except ParseError as exc:
        return str(exc)
    return Listing(tuple(scrub(i) for i in parsed.instances))


def encoded(items: list[object]) -> bytes:
    """As Node's JSON.stringify writes it: no blanks."""
    return json.dumps(items, separators=(",", ":")).encode()


def planned(listing: Listing) -> object:
    desired = DesiredState((DesiredInstance(
        id=uuid.UUID(int=1), organization_id=None, instance_name="clinic-a",
        enabled=True, status="connected", disconnect_reason=None),))
    read = ServerInventory("s1", V2, "2.3.6", None, listing.instances)
    policy = Policy(managed_pattern=re.compile(r"clinic-.*"))
    return planner.plan(desired, [read], Memory(), policy, datetime(2025, 11, 15, tzinfo=UTC))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences())
def test_the_incremental_parse_is_the_full_parse_pass_after_pass(
    sequence: list[tuple[str, list[object]]],
) -> None:
    cache = ListingCache("s1", scrub)
    for line, items in sequence:
        expected = full_parse(line, items)
        body = split(encoded(items))
        assert isinstance(body, Items)
        try:
            got: Listing | str = cache.parse(line, body.raws)
        except ParseError as exc:
            got = str(exc)
        assert got == expected
        if isinstance(got, Listing) and isinstance(expected, Listing):
            assert planned(got) == planned(expected)


def test_an_unchanged_item_is_handed_back_not_parsed_again() -> None:
    cache = ListingCache("s1", scrub)
    items: list[object] = [{"name": "clinic-a", "connectionStatus": "open"},
                           {"name": "clinic-b", "connectionStatus": "close"}]
    first = cache.parse(V2, split(encoded(items)).raws).instances
    items[1] = {"name": "clinic-b", "connectionStatus": "open"}
    second = cache.parse(V2, split(encoded(items[::-1])).raws).instances
    assert second[1] is first[0]
    assert second[0] is not first[1] and second[0].stored_status == "open"


def test_a_body_that_is_not_a_strict_json_array_is_decoded_whole() -> None:
    assert split(b'{"status": 401, "error": true}') == {"status": 401, "error": True}
    assert not isinstance(split(b"[NaN]"), Items)
