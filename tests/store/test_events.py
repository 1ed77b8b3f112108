"""Events: SPEC 5's exact JSON, relayed from the outbox to Redis in order, never lost."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from reconciler.events import EventPublisher, PublishError, build_event, relay_outbox
from reconciler.model import Delete, EventType, Outcome
from reconciler.observability import Metrics
from reconciler.store import Store

ORG = uuid.UUID("4e8ddba1-ad52-4613-9a03-ec64636b3f6c")
NAME = f"clinic-{ORG}-1763224272772"


def test_build_event_has_exactly_the_spec_fields_in_order() -> None:
    event_id = uuid.UUID("0b9f6c1e-6a55-4a3e-9d4e-6f0d2a3b1c77")
    at = datetime(2025, 11, 15, 13, 45, 0, 123456, tzinfo=timezone(timedelta(hours=-3)))
    event = build_event(EventType.REMOVED, instance_name=NAME, organization_id=ORG,
                        server="default", reason="orphan", occurred_at=at, event_id=event_id)
    assert json.dumps(event.payload()) == json.dumps({
        "event_id": "0b9f6c1e-6a55-4a3e-9d4e-6f0d2a3b1c77",
        "type": "instance.removed",
        "instance_name": NAME,
        "organization_id": "4e8ddba1-ad52-4613-9a03-ec64636b3f6c",
        "server": "default",
        "reason": "orphan",
        "occurred_at": "2025-11-15T16:45:00.123456+00:00",
        "source": "evolution-reconciler",
    })
    anonymous = build_event(EventType.MISSING, instance_name="x", organization_id=None,
                            server="s", reason="instance_missing", occurred_at=at)
    assert anonymous.organization_id is None and anonymous.payload()["organization_id"] is None
    assert anonymous.event_id.version == 4
    with pytest.raises(ValueError, match="timezone"):
        build_event(EventType.MISSING, instance_name="x", organization_id=None, server="s",
                    reason="r", occurred_at=datetime(2025, 1, 1))


@pytest.fixture
async def subscriber(redis_url: str, channel: str) -> AsyncIterator[PubSub]:
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    with anyio.fail_after(5):
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message and message["type"] == "subscribe":
                break
    try:
        yield pubsub
    finally:
        await pubsub.aclose()
        await client.aclose()


async def _received(pubsub: PubSub, count: int) -> list[str]:
    messages: list[str] = []
    with anyio.fail_after(5):
        while len(messages) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message:
                messages.append(message["data"].decode())
    return messages


async def _decide(store: Store, count: int) -> list[dict[str, object]]:
    """Audit `count` actions with events, alternating instances, as the executor does."""
    events = []
    for i in range(count):
        name = f"{NAME}-{i % 2}"
        action = Delete(server="default", instance_name=name, reason="orphan",
                        organization_id=ORG)
        event = build_event(EventType.REMOVED, instance_name=name, organization_id=ORG,
                            server="default", reason="orphan", occurred_at=datetime.now(UTC))
        await store.decisions.record(action, Outcome.OK, event=event)
        events.append(event.payload())
    return events


async def test_relay_publishes_in_order_with_exact_json_and_to_the_stream(
    store: Store, redis_url: str, channel: str, subscriber: PubSub
) -> None:
    stream = f"{channel}-stream"
    events = await _decide(store, 5)
    publisher = EventPublisher(redis_url, channel=channel, stream=stream)
    metrics = Metrics(["default"])
    metrics.outbox_pending.set(5)
    try:
        assert await relay_outbox(store.outbox, publisher, metrics) == 5
        assert await relay_outbox(store.outbox, publisher, metrics) == 0
    finally:
        await publisher.aclose()

    assert await _received(subscriber, 5) == [json.dumps(e) for e in events]
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(stream)
        assert [fields[b"event"].decode() for _, fields in entries] == \
            [json.dumps(e) for e in events]
        await client.delete(stream)
    finally:
        await client.aclose()
    assert await store.outbox.count_pending() == 0
    assert metrics.outbox_pending._value.get() == 0
    assert metrics.events_published_total.labels(type="instance.removed")._value.get() == 5


async def test_redis_down_keeps_events_pending_until_it_is_back(
    store: Store, redis_url: str, channel: str, subscriber: PubSub
) -> None:
    events = await _decide(store, 3)
    down = EventPublisher("redis://:hunter2-secret@127.0.0.1:1/0", channel=channel)
    metrics = Metrics(["default"])
    try:
        with pytest.raises(PublishError) as caught:
            await relay_outbox(store.outbox, down, metrics)
        with pytest.raises(PublishError):
            await down.ping()
    finally:
        await down.aclose()
    assert "hunter2-secret" not in str(caught.value)
    assert await store.outbox.count_pending() == 3
    assert metrics.outbox_pending._value.get() == 3

    more = await _decide(store, 1)
    up = EventPublisher(redis_url, channel=channel)
    try:
        await up.ping()
        assert await relay_outbox(store.outbox, up) == 4
        assert await relay_outbox(store.outbox, up) == 0
    finally:
        await up.aclose()

    assert await _received(subscriber, 4) == [json.dumps(e) for e in events + more]
    assert await subscriber.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    assert await store.outbox.count_pending() == 0


async def test_relay_drains_more_than_one_batch(store: Store, redis_url: str, channel: str,
                                                subscriber: PubSub) -> None:
    count = 501 + 2
    await _decide(store, count)
    publisher = EventPublisher(redis_url, channel=channel)
    try:
        assert await relay_outbox(store.outbox, publisher) == count
    finally:
        await publisher.aclose()
    assert len(await _received(subscriber, count)) == count


class _FailsOnThird(EventPublisher):
    """A real publisher whose Redis 'fails' on the third event: the one failure not made real."""

    calls = 0

    async def publish(self, payload: dict[str, object]) -> None:
        self.calls += 1
        if self.calls == 3:
            raise PublishError("connection reset")
        await super().publish(payload)


async def test_a_failure_mid_batch_keeps_what_was_published_and_the_order(
    store: Store, redis_url: str, channel: str, subscriber: PubSub
) -> None:
    events = await _decide(store, 5)
    flaky = _FailsOnThird(redis_url, channel=channel)
    good = EventPublisher(redis_url, channel=channel)
    try:
        with pytest.raises(PublishError):
            await relay_outbox(store.outbox, flaky)
        assert await store.outbox.count_pending() == 3
        assert await relay_outbox(store.outbox, good) == 3
    finally:
        await flaky.aclose()
        await good.aclose()
    assert await _received(subscriber, 5) == [json.dumps(e) for e in events]
    assert await subscriber.get_message(ignore_subscribe_messages=True, timeout=0.2) is None


async def test_published_events_are_pruned_after_the_retention_pending_never(
    store: Store,
) -> None:
    await _decide(store, 3)
    [first, *_] = await store.outbox.pending()
    await store.outbox.mark_published([first.id])
    assert await store.outbox.prune(keep_seconds=3600) == 0
    assert await store.outbox.prune(keep_seconds=0) == 1
    assert await store.outbox.count_pending() == 2
    assert [e.id for e in await store.outbox.pending()] == [first.id + 1, first.id + 2]
