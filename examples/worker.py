"""A message worker that stops processing a removed instance and drops its cached state.

    RECONCILER_REDIS_URL=redis://127.0.0.1:6379/0 WORKER_NAME=worker-1 python examples/worker.py

Every worker process runs one `StreamConsumer` under its own, stable name (a pod's StatefulSet
name, a hostname): it gets every event, resumes where it stopped, and is told of a gap.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field

import anyio
import structlog

from reconciler.consumer import DEFAULT_STREAM, Gap, Message, StreamConsumer, UnknownEvent
from reconciler.model import Event, EventType

log = structlog.get_logger("worker")


@dataclass
class InstanceWorker:
    """The part of a message worker that the events drive: which instances it serves."""

    sessions: dict[str, dict[str, object]] = field(default_factory=dict)
    """Cached state per instance name (contacts, tokens, queues): what a removal must drop."""
    paused: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)

    def serves(self, instance_name: str) -> bool:
        return instance_name not in self.removed and instance_name not in self.paused

    async def handle(self, message: Message) -> None:
        match message:
            case Event(type=EventType.REMOVED, instance_name=name):
                self.removed.add(name)
                self.paused.discard(name)
                self.sessions.pop(name, None)
                log.info("instance removed: stopped and dropped", instance=name)
            case Event(type=EventType.DISCONNECTED | EventType.MISSING, instance_name=name):
                self.paused.add(name)
            case Event(type=EventType.CONNECTED, instance_name=name):
                self.paused.discard(name)
            case Event(type=EventType.DUPLICATE):
                pass  # the daemon resolves duplicates; a removal follows if one goes
            case Gap():
                # Events were lost: nothing cached can be trusted to still exist. Drop it all;
                # each instance is loaded again from the database when it is next used.
                log.warning("missed events; dropping every cached state", cursor=message.cursor)
                self.sessions.clear()
                self.paused.clear()
            case UnknownEvent():
                log.warning("event of an unknown type, ignored", type=message.type,
                            stream_id=message.stream_id)


async def main() -> None:
    worker = InstanceWorker()
    async with StreamConsumer(
        os.environ["RECONCILER_REDIS_URL"],
        os.environ.get("WORKER_NAME", socket.gethostname()),
        stream=os.environ.get("RECONCILER_EVENTS_STREAM", DEFAULT_STREAM),
    ) as consumer:
        await consumer.run(worker.handle)  # until cancelled (Ctrl-C, SIGTERM via anyio)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main)
