"""A stream of its own per test, workers run in a task group, events published by the daemon's
own publisher (the same MULTI PUBLISH + XADD as in production)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from anyio.abc import TaskGroup

from reconciler.consumer import Backoff, Message, StreamConsumer
from reconciler.events import EventPublisher, build_event
from reconciler.model import Event, EventType

FAST = Backoff(initial=0.01, maximum=0.05)
ORG = uuid.UUID("4e8ddba1-ad52-4613-9a03-ec64636b3f6c")


def removal(i: int, *, instance: str | None = None) -> Event:
    return build_event(EventType.REMOVED, instance_name=instance or f"clinic-{ORG}-{i}",
                       organization_id=ORG, server="default", reason="orphan",
                       occurred_at=datetime.now(UTC))


@pytest.fixture
async def stream(redis_url: str, channel: str) -> AsyncIterator[str]:
    name = f"{channel}:stream"
    yield name
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{name}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def publisher(redis_url: str, channel: str, stream: str) -> AsyncIterator[EventPublisher]:
    pub = EventPublisher(redis_url, channel=channel, stream=stream)
    yield pub
    await pub.aclose()


class Worker:
    """A consumer under a name, collecting what its handler was given; start, stop, wait."""

    def __init__(self, redis_url: str, stream: str, name: str, **options: Any) -> None:
        self.redis_url, self.stream, self.name, self.options = redis_url, stream, name, options
        self.received: list[Message] = []
        self.fail: Callable[[Message], bool] = lambda _: False
        self._scope: anyio.CancelScope | None = None
        self._arrived = anyio.Event()

    async def handle(self, message: Message) -> None:
        if self.fail(message):
            raise RuntimeError("handler failed")
        self.received.append(message)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def start(self, tg: TaskGroup) -> None:
        ready = anyio.Event()

        async def run() -> None:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with StreamConsumer(self.redis_url, self.name, stream=self.stream,
                                          backoff=FAST, block_seconds=0.5,
                                          **self.options) as consumer:
                    ready.set()
                    await consumer.run(self.handle)

        tg.start_soon(run)
        await ready.wait()

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def wait_for(self, count: int, timeout: float = 10) -> list[Message]:
        with anyio.fail_after(timeout):
            while len(self.received) < count:
                await self._arrived.wait()
        return self.received

    def events(self) -> list[Event]:
        return [m for m in self.received if isinstance(m, Event)]
