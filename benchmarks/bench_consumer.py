"""One `StreamConsumer` against the daemon's own publisher: how many events per second it
handles end to end (a backlog drained: read, decode, de-duplicate, handle, commit the cursor),
and the delay from publication to the handler at a steady rate (p50, p95).

    python benchmarks/bench_consumer.py [--backlog 20000] [--rate 1000] [--seconds 5]

Uses RECONCILER_TEST_REDIS_URL or Redis on 127.0.0.1:6379, under a stream of its own, removed
afterwards. Publisher and consumer share one event loop, so the delay includes scheduling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import anyio
import redis.asyncio as aioredis

from reconciler.consumer import Message, StreamConsumer
from reconciler.events import EventPublisher, build_event
from reconciler.model import Event, EventType
from reconciler.observability import configure_logging


def event(i: int) -> Event:
    return build_event(EventType.REMOVED, instance_name=f"clinic-{uuid.uuid4()}-{i}",
                       organization_id=None, server="default", reason="orphan",
                       occurred_at=datetime.now(UTC))


async def bench(redis_url: str, backlog: int, rate: float, seconds: float) -> None:
    stream = f"bench-consumer-{uuid.uuid4().hex[:8]}:stream"
    publisher = EventPublisher(redis_url, channel=f"{stream}:channel", stream=stream)
    handled = 0
    published_at: dict[uuid.UUID, float] = {}
    delays: list[float] = []
    done = anyio.Event()
    target = backlog

    async def handle(message: Message) -> None:
        nonlocal handled
        handled += 1
        if isinstance(message, Event) and message.event_id in published_at:
            delays.append(time.perf_counter() - published_at[message.event_id])
        if handled >= target:
            done.set()

    try:
        for i in range(backlog):
            await publisher.publish(event(i).payload())
        async with anyio.create_task_group() as tg, StreamConsumer(
                redis_url, "bench", stream=stream, start="earliest") as consumer:
            started = time.perf_counter()
            tg.start_soon(consumer.run, handle)
            await done.wait()
            elapsed = time.perf_counter() - started
            print(f"backlog of {backlog}: {backlog / elapsed:,.0f} events/s handled end to end "
                  f"({elapsed:.2f} s)")

            count = int(rate * seconds)
            done, target = anyio.Event(), handled + count
            for i in range(count):
                e = event(i)
                published_at[e.event_id] = time.perf_counter()
                await publisher.publish(e.payload())
                await anyio.sleep(1 / rate)
            with anyio.fail_after(30):
                await done.wait()
            ms = sorted(d * 1000 for d in delays)
            print(f"steady {rate:.0f} events/s for {seconds:.0f} s: publication to handler "
                  f"p50 {statistics.median(ms):.2f} ms, p95 {ms[int(len(ms) * 0.95)]:.2f} ms, "
                  f"max {ms[-1]:.2f} ms ({len(ms)} events)")
            tg.cancel_scope.cancel()
    finally:
        await publisher.aclose()
        client = aioredis.from_url(redis_url)
        await client.delete(stream, f"{stream}:worker:bench", f"{stream}:worker:bench:seen")
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    configure_logging("console", "error")
    url = os.environ.get("RECONCILER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    anyio.run(bench, url, args.backlog, args.rate, args.seconds)


if __name__ == "__main__":
    main()
