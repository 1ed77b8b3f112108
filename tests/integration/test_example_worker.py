"""examples/worker.py end to end: the daemon removes an orphan, the worker drops its state."""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis

from examples.worker import InstanceWorker
from reconciler.consumer import Message, StreamConsumer
from reconciler.model import Event, EventType
from tests.integration.conftest import Env
from tests.integration.test_incident import seed_incident


async def test_the_example_worker_stops_serving_the_instance_the_daemon_removed(
        env: Env) -> None:
    _, orphan, replacement, _ = await seed_incident(env)
    worker = InstanceWorker(sessions={orphan: {"queue": ["hello"]}, replacement: {}})
    removed = anyio.Event()

    async def handle(message: Message) -> None:
        await worker.handle(message)
        if isinstance(message, Event) and message.type is EventType.REMOVED:
            removed.set()

    client = aioredis.from_url(env.redis_url)
    try:
        async with anyio.create_task_group() as tg, \
                StreamConsumer(env.redis_url, "worker-1", stream=env.stream,
                               block_seconds=0.5) as consumer:
            tg.start_soon(consumer.run, handle)
            with anyio.fail_after(10):  # a new worker starts at the stream's end, once saved
                while not await client.hexists(consumer.cursor_key, "cursor"):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            for _ in range(2):  # the orphan must be seen in two passes before it goes
                proc = await anyio.to_thread.run_sync(
                    lambda: env.cli("once", "--output", "json", RECONCILER_MODE="enforce"))
                assert proc.returncode == 0, proc.stderr
            with anyio.fail_after(10):
                await removed.wait()
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()
    assert env.sim.names() == [replacement]
    assert orphan not in worker.sessions and not worker.serves(orphan)
    assert worker.serves(replacement) and replacement in worker.sessions
