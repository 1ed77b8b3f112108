"""Events of SPEC 5: built as data, written to the outbox with their audit row, relayed to Redis.

An event reaches Redis only from the outbox, so none is lost while Redis is down and each keeps
the order in which it was decided; consumers de-duplicate by `event_id` (at least once).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from uuid import UUID

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from reconciler.failpoints import reached
from reconciler.model import Event, EventType
from reconciler.observability import Metrics
from reconciler.redaction import redact, url_passwords
from reconciler.store import Outbox, OutboxEvent, StoreError

EVENT_FIELDS = tuple(f.name for f in fields(Event))
"""The fields of an event, in the order consumers see them."""
STREAM_MAXLEN = 100_000


class PublishError(Exception):
    """Redis did not accept an event; the message never holds the Redis password."""


def build_event(
    event_type: EventType,
    *,
    instance_name: str,
    organization_id: UUID | None,
    server: str,
    reason: str,
    occurred_at: datetime,
    event_id: UUID | None = None,
) -> Event:
    """A new event, under a new id unless the decision already has one (SPEC 5)."""
    return Event(event_id or uuid.uuid4(), event_type, instance_name, organization_id, server,
                 reason, occurred_at)


def encode_event(payload: Mapping[str, object]) -> str:
    """The JSON consumers receive: SPEC 5's field order, whatever order the outbox's jsonb kept."""
    ordered = {k: payload[k] for k in EVENT_FIELDS if k in payload}
    ordered.update((k, v) for k, v in payload.items() if k not in ordered)
    return json.dumps(ordered, ensure_ascii=False)


class EventPublisher:
    """Publishes events on the pub/sub channel and, when configured, the stream."""

    def __init__(
        self,
        redis_url: str,
        *,
        channel: str = "whatsapp:instance-events",
        stream: str | None = None,
    ) -> None:
        self.channel = channel
        self.stream = stream
        self._secrets = url_passwords(redis_url)
        self._redis: redis.Redis = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=5,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )

    def _error(self, doing: str, exc: BaseException) -> PublishError:
        return PublishError(redact(f"{doing}: {type(exc).__name__}: {exc}", self._secrets))

    async def publish(self, payload: dict[str, object]) -> None:
        """PUBLISH and XADD in one MULTI, so the channel and the stream never disagree."""
        message = encode_event(payload)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.publish(self.channel, message)
                if self.stream:
                    pipe.xadd(self.stream, {"event": message}, maxlen=STREAM_MAXLEN,
                              approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._error("publishing an event", exc) from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise self._error("reaching Redis", exc) from exc

    async def aclose(self) -> None:
        await self._redis.aclose()


async def relay_outbox(
    outbox: Outbox, publisher: EventPublisher, metrics: Metrics | None = None
) -> int:
    """Publish pending events oldest first, marking those Redis took as published.

    The first failure stops the relay (and is raised): the events after it stay pending, so an
    instance's events are never published out of order. Marks are written per batch, also when a
    publish fails; only a crash between a publish and its mark repeats an event (at least once).
    Returns how many were published.
    """
    published = 0
    try:
        while batch := await outbox.pending():
            accepted: list[OutboxEvent] = []
            try:
                for event in batch:
                    await publisher.publish(event.payload)
                    accepted.append(event)
                await reached("publish.after")
            finally:
                if accepted:
                    await outbox.mark_published([e.id for e in accepted])
                    published += len(accepted)
                    if metrics is not None:
                        for e in accepted:
                            metrics.events_published_total.labels(
                                type=str(e.payload.get("type"))).inc()
    finally:
        if metrics is not None:
            await _refresh_pending(outbox, metrics)
    return published


async def _refresh_pending(outbox: Outbox, metrics: Metrics) -> None:
    """Best effort: a database failure here must not hide the error that ended the relay."""
    try:
        metrics.outbox_pending.set(await outbox.count_pending())
    except StoreError:
        return
