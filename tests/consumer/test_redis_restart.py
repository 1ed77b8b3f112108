"""A Redis restart mid-stream loses nothing: our own redis-server (AOF, fsync always), killed and
started again on the same port while a worker is between a handler and its cursor commit."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from reconciler.consumer import Message
from reconciler.events import EventPublisher
from tests.consumer.conftest import Worker, removal

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs the redis-server binary")


class OwnRedis:
    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = aioredis.from_url(self.url)
        try:
            with anyio.fail_after(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except Exception:  # not up yet, or still loading its AOF
                        await anyio.sleep(0.02)
        finally:
            await client.aclose()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


async def test_a_redis_restart_mid_stream_loses_nothing(own_redis: OwnRedis) -> None:
    await own_redis.start()
    stream = "events:stream"
    worker = Worker(own_redis.url, stream, "w", start="earliest")
    gate = anyio.Event()
    in_handler = anyio.Event()
    handle = worker.handle

    async def held(message: Message) -> None:
        if len(worker.received) == 2 and not gate.is_set():
            in_handler.set()
            await gate.wait()
        await handle(message)

    worker.handle = held  # type: ignore[method-assign]
    events = [removal(i) for i in range(10)]
    publisher = EventPublisher(own_redis.url, channel="events", stream=stream)
    try:
        async with anyio.create_task_group() as tg:
            await worker.start(tg)
            for event in events[:5]:
                await publisher.publish(event.payload())
            await in_handler.wait()
            own_redis.kill()  # the third event is being handled; its commit will meet no Redis
            gate.set()
            await own_redis.start()
            for event in events[5:]:
                await publisher.publish(event.payload())
            assert await worker.wait_for(10, timeout=20) == events
            worker.stop()
            again = Worker(own_redis.url, stream, "w", start="earliest")
            await again.start(tg)
            last = removal(10)
            await publisher.publish(last.payload())
            assert await again.wait_for(1) == [last]  # every cursor commit survived
            tg.cancel_scope.cancel()
    finally:
        await publisher.aclose()
