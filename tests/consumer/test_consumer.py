"""SPEC 5.1 against a real Redis: broadcast, at least once, in order, once per event_id, resumed
after a restart, a gap told, unknown types handed over."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import partial

import anyio
import pytest
import redis.asyncio as aioredis

from reconciler.consumer import Gap, StreamConsumer, UnknownEvent, decode_event
from reconciler.events import EventPublisher, build_event, encode_event
from reconciler.model import Event, EventType
from tests.consumer.conftest import Worker, removal

Earliest = partial(Worker, start="earliest")


def test_decode_gives_back_the_published_event_and_passes_the_rest_through() -> None:
    event = build_event(EventType.MISSING, instance_name="x\ny", organization_id=None,
                        server="", reason="instance_missing", occurred_at=datetime.now(UTC))
    raw = encode_event(event.payload())
    assert decode_event("1-0", {"event": raw}) == event
    newer = {**event.payload(), "type": "instance.renamed"}
    unknown = decode_event("2-0", {"event": json.dumps(newer)})
    assert unknown == UnknownEvent("2-0", "instance.renamed", newer, json.dumps(newer))
    assert decode_event("3-0", {"event": "{not json"}) == UnknownEvent("3-0", None, None,
                                                                        "{not json")
    assert decode_event("4-0", {"other": "x"}) == UnknownEvent("4-0", None, None, None)
    with pytest.raises(ValueError, match="name"):
        StreamConsumer("redis://127.0.0.1:1", "bad\nname")


async def test_three_workers_each_get_every_event_in_order(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    workers = [Earliest(redis_url, stream, f"worker-{i}") for i in range(3)]
    published = [removal(i) for i in range(20)]
    async with anyio.create_task_group() as tg:
        for w in workers:
            await w.start(tg)
        for event in published:
            await publisher.publish(event.payload())
        for w in workers:
            assert await w.wait_for(20) == published
        tg.cancel_scope.cancel()


async def test_a_stopped_worker_gets_the_ten_removals_after_it_restarts_in_order_once(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    worker = Earliest(redis_url, stream, "billing")
    first, *removals = [removal(i) for i in range(11)]
    sentinel = removal(99)
    async with anyio.create_task_group() as tg:
        await worker.start(tg)
        await publisher.publish(first.payload())
        await worker.wait_for(1)
        worker.stop()
        for event in removals:
            await publisher.publish(event.payload())
        # Delivered twice by the daemon (a crash between publish and mark): handled once.
        await publisher.publish(removals[3].payload())
        await publisher.publish(first.payload())
        restarted = Earliest(redis_url, stream, "billing")
        await restarted.start(tg)
        await publisher.publish(sentinel.payload())
        assert await restarted.wait_for(11) == [*removals, sentinel]
        tg.cancel_scope.cancel()


async def test_a_handler_that_raises_gets_the_event_again_and_later_ones_wait(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    worker = Earliest(redis_url, stream, "flaky")
    events = [removal(i) for i in range(3)]
    failures: list[Event] = []

    def fail(message: object) -> bool:
        if message == events[1] and len(failures) < 2:
            failures.append(events[1])
            return True
        return False

    worker.fail = fail
    async with anyio.create_task_group() as tg:
        await worker.start(tg)
        for event in events:
            await publisher.publish(event.payload())
        assert await worker.wait_for(3) == events
        assert failures == [events[1], events[1]]
        tg.cancel_scope.cancel()


async def test_a_worker_away_past_the_retention_is_told_before_the_next_event(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    worker = Earliest(redis_url, stream, "slow")
    events = [removal(i) for i in range(6)]
    client = aioredis.from_url(redis_url)
    try:
        async with anyio.create_task_group() as tg:
            await worker.start(tg)
            await publisher.publish(events[0].payload())
            await worker.wait_for(1)
            worker.stop()
            for event in events[1:]:
                await publisher.publish(event.payload())
            await client.xtrim(stream, maxlen=2, approximate=False)  # what MAXLEN ~ does, sooner
            first_kept = (await client.xrange(stream, count=1))[0][0].decode()
            back = Earliest(redis_url, stream, "slow")
            await back.start(tg)
            received = await back.wait_for(3)
            assert isinstance(received[0], Gap) and received[0].first_available == first_kept
            assert received[1:] == events[4:]
            back.stop()
            # Told once: resuming again carries on without a second gap.
            again = Earliest(redis_url, stream, "slow")
            await again.start(tg)
            last = removal(7)
            await publisher.publish(last.payload())
            assert await again.wait_for(1) == [last]
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()


async def test_a_deleted_stream_is_a_gap_and_reading_starts_over(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    worker = Earliest(redis_url, stream, "w")
    client = aioredis.from_url(redis_url)
    try:
        async with anyio.create_task_group() as tg:
            await worker.start(tg)
            await publisher.publish(removal(0).payload())
            await worker.wait_for(1)
            worker.stop()
            await client.delete(stream)
            back = Earliest(redis_url, stream, "w")
            await back.start(tg)
            await back.wait_for(1)
            later = removal(1)
            await publisher.publish(later.payload())
            received = await back.wait_for(2)
            assert isinstance(received[0], Gap) and received[0].first_available is None
            assert received[1:] == [later]
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()


async def test_unknown_types_reach_the_handler_and_a_new_worker_starts_at_the_end(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    await publisher.publish(removal(0).payload())  # before the worker: not for it
    worker = Worker(redis_url, stream, "fresh")  # start="latest"
    newer = json.dumps({"event_id": "e-1", "type": "instance.renamed", "instance_name": "x"})
    client = aioredis.from_url(redis_url)
    try:
        async with anyio.create_task_group() as tg:
            await worker.start(tg)
            with anyio.fail_after(5):  # the cursor is saved before the first event
                while not await client.hexists(f"{stream}:worker:fresh", "cursor"):  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            await client.xadd(stream, {"event": newer})
            await client.xadd(stream, {"event": newer})  # same event_id: once
            event = removal(1)
            await publisher.publish(event.payload())
            received = await worker.wait_for(2)
            assert isinstance(received[0], UnknownEvent)
            assert (received[0].type, received[0].raw) == ("instance.renamed", newer)
            assert received[1:] == [event]
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()
