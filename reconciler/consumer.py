"""The workers' side of SPEC 5.1: every worker gets every event of the stream, even after a restart.

Each worker reads the stream with `XREAD` from its own cursor (broadcast: a consumer group would
share the events out between workers, and each must drop a removed instance's state). The cursor
lives in Redis under the worker's name and moves only after the handler returned, so an event is
handled at least once, in stream order (hence in order per instance); the ids of the last events
handled are kept with it, so an event the daemon published twice (SPEC 5) is handled once. A
worker whose cursor is older than the stream's first entry lost events to the `MAXLEN` trim: it
gets a `Gap` before the next event, to resynchronise from the database.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal, Self, TypeVar, cast
from uuid import UUID

import anyio
import redis.asyncio as redis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random
from tenacity.wait import wait_base

from reconciler.model import Event, EventType

DEFAULT_STREAM = "whatsapp:instance-events:stream"
_MAX_SEQ = 2**64 - 1
_OUTAGES = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a Redis outage looks like (`BusyLoadingError`, while a restarted Redis loads its AOF, is a
`ConnectionError`); anything else is a bug or a misconfiguration and is raised."""

log = structlog.get_logger("reconciler.consumer")
T = TypeVar("T")


@dataclass(frozen=True)
class UnknownEvent:
    """A stream entry that is not one of SPEC 5's five events: a type this version does not know
    (a newer daemon), or an entry it cannot parse. Handed over as is, never dropped."""

    stream_id: str
    type: str | None
    payload: Mapping[str, Any] | None
    raw: str | None
    """The published JSON (`None` when the entry has no `event` field)."""


@dataclass(frozen=True)
class Gap:
    """Events after `cursor` were trimmed before this worker read them: resynchronise.

    May also mean the stream was deleted or reset (`first_available` is then `None`). Delivered
    once, before the first event still available.
    """

    cursor: str
    first_available: str | None


Message = Event | UnknownEvent | Gap
Handler = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, for Redis outages and for a handler that raised."""

    initial: float = 0.1
    maximum: float = 30.0

    def wait(self) -> wait_base:
        return wait_exponential(multiplier=self.initial, max=self.maximum) + wait_random(
            0, self.initial)


def decode_event(stream_id: str, fields: Mapping[str, str]) -> Event | UnknownEvent:
    """A stream entry as the typed `Event` the daemon published, else as an `UnknownEvent`."""
    raw = fields.get("event")
    try:
        payload = json.loads(raw) if raw is not None else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return UnknownEvent(stream_id, None, None, raw)
    kind = payload.get("type")
    try:
        org = payload["organization_id"]
        return Event(
            event_id=UUID(payload["event_id"]),
            type=EventType(_text(kind)),
            instance_name=_text(payload["instance_name"]),
            organization_id=None if org is None else UUID(org),
            server=_text(payload["server"]),
            reason=_text(payload["reason"]),
            occurred_at=datetime.fromisoformat(payload["occurred_at"]),
            source=_text(payload.get("source", "evolution-reconciler")),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return UnknownEvent(stream_id, kind if isinstance(kind, str) else None, payload, raw)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _event_id(message: Event | UnknownEvent) -> str | None:
    if isinstance(message, Event):
        return str(message.event_id)
    value = message.payload.get("event_id") if message.payload else None
    return value if isinstance(value, str) else None


def _entries(read: object) -> list[tuple[str, dict[str, str]]]:
    """The entries of one stream's XREAD answer (RESP2, decoded), typed."""
    answer = cast(list[tuple[str, list[tuple[str, dict[str, str]]]]], read)
    return list(answer[0][1]) if answer else []


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _before(stream_id: str) -> str:
    """The greatest id smaller than `stream_id` (XREAD reads after its id, exclusively)."""
    ms, seq = _id(stream_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{_MAX_SEQ}"


class StreamConsumer:
    """One worker's view of the event stream; `run(handler)` handles events until cancelled.

    `name` identifies the worker across restarts (its cursor); two processes must not share one.
    A worker seen for the first time starts at the stream's end (`start="latest"`; its state comes
    from the database) or at its first entry (`start="earliest"`).
    """

    def __init__(
        self,
        redis_url: str,
        name: str,
        *,
        stream: str = DEFAULT_STREAM,
        start: Literal["latest", "earliest"] = "latest",
        remember: int = 10_000,
        batch: int = 100,
        block_seconds: float = 5.0,
        backoff: Backoff = Backoff(),
    ) -> None:
        if not name or not name.isprintable():
            raise ValueError("a worker's name must be non-empty and printable")
        if remember < 1 or batch < 1:
            raise ValueError("remember and batch must be at least 1")
        self.name, self.stream, self.start = name, stream, start
        self.cursor_key = f"{stream}:worker:{name}"
        self.seen_key = f"{self.cursor_key}:seen"
        self._remember, self._batch, self._block_ms = remember, batch, int(block_seconds * 1000)
        self._backoff = backoff
        self._redis: redis.Redis = redis.Redis.from_url(
            redis_url, decode_responses=True, socket_connect_timeout=5,
            socket_timeout=block_seconds + 5)
        self._cursor = ""
        self._seen: deque[str] = deque(maxlen=remember)
        self._seen_set: set[str] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._redis.aclose()

    async def run(self, handler: Handler) -> None:
        """Hands every event to `handler`, one at a time, in stream order; returns only if
        cancelled. A handler that raises gets the same message again after a backoff."""
        await self._retrying(self._load)
        while True:
            info, entries = await self._retrying(self._read)
            gap = self._gap(info)
            if gap is not None:
                await self._deliver(handler, gap)
                await self._retrying(partial(self._commit, self._after_gap(info), None))
                continue
            if not entries:
                await self._retrying(self._wait)
                continue
            for stream_id, fields in entries:
                message = decode_event(stream_id, fields)
                event_id = _event_id(message)
                if event_id is not None and event_id in self._seen_set:
                    log.debug("duplicate event skipped", worker=self.name, event_id=event_id)
                    event_id = None
                else:
                    await self._deliver(handler, message)
                await self._retrying(partial(self._commit, stream_id, event_id))

    async def _load(self) -> None:
        cursor = cast(str | None, await self._redis.hget(self.cursor_key, "cursor"))
        seen = cast(list[str], await self._redis.lrange(self.seen_key, 0, self._remember - 1))
        self._seen.clear()
        self._seen.extend(reversed(seen))
        self._seen_set = set(self._seen)
        if cursor is not None:
            self._cursor = cursor
            return
        first = "0-0"
        if self.start == "latest":
            info = await self._info()
            first = info["last-generated-id"] if info else "0-0"
        # Saved now: a worker that dies before its first event must not start over at a later end.
        await self._redis.hsetnx(self.cursor_key, "cursor", first)
        self._cursor = cast(str | None, await self._redis.hget(self.cursor_key, "cursor")) or first

    async def _info(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = await self._redis.xinfo_stream(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        return info

    async def _read(self) -> tuple[dict[str, Any] | None, list[tuple[str, dict[str, str]]]]:
        """The stream's first and last ids and the next entries, in one transaction: a trim
        cannot fall between them, so the gap check sees exactly what the read missed."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(self.stream)
            pipe.xread({self.stream: self._cursor}, count=self._batch)
            info, read = await pipe.execute(raise_on_error=False)
        if isinstance(info, ResponseError):
            if "no such key" not in str(info).lower():
                raise info
            info = None
        if isinstance(read, Exception):
            raise read
        return info, _entries(read)

    async def _wait(self) -> None:
        """Blocks until an entry after the cursor exists; `_read` then reads it with the check."""
        await self._redis.xread({self.stream: self._cursor}, count=1, block=self._block_ms)

    def _gap(self, info: dict[str, Any] | None) -> Gap | None:
        if self._cursor == "0-0":
            return None
        if info is None:
            return Gap(self._cursor, None)
        if _id(info["last-generated-id"]) < _id(self._cursor):
            return Gap(self._cursor, None)
        first = info.get("first-entry")
        if first and _id(self._cursor) < _id(_before(first[0])):
            return Gap(self._cursor, first[0])
        return None

    def _after_gap(self, info: dict[str, Any] | None) -> str:
        """The cursor that makes the next read start at the first entry still kept."""
        if info is None or _id(info["last-generated-id"]) < _id(self._cursor):
            return "0-0"
        return _before(info["first-entry"][0])

    async def _deliver(self, handler: Handler, message: Message) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception), sleep=anyio.sleep,
            wait=self._backoff.wait(),
            before_sleep=lambda state: log.warning(
                "handler failed; the event is delivered again", worker=self.name,
                attempt=state.attempt_number, error=repr(state.outcome.exception())
                if state.outcome else None),
        ):
            with attempt:
                await handler(message)

    async def _commit(self, cursor: str, event_id: str | None) -> None:
        """Cursor and recent ids in one transaction: a restart never re-handles what they
        acknowledge, nor skips what they do not."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.cursor_key, "cursor", cursor)
            if event_id is not None:
                pipe.lpush(self.seen_key, event_id)
                pipe.ltrim(self.seen_key, 0, self._remember - 1)
            await pipe.execute()
        self._cursor = cursor
        if event_id is not None:
            if len(self._seen) == self._seen.maxlen:
                self._seen_set.discard(self._seen[0])
            self._seen.append(event_id)
            self._seen_set.add(event_id)

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_OUTAGES), sleep=anyio.sleep, reraise=True,
            wait=self._backoff.wait(),
            before_sleep=lambda state: log.warning(
                "redis unavailable; retrying", worker=self.name, attempt=state.attempt_number,
                error=repr(state.outcome.exception()) if state.outcome else None),
        ):
            with attempt:
                return await operation()
        raise AssertionError("unreachable: tenacity retries until it returns or raises")


async def read_stream(
    redis_url: str, stream: str, *, since_ms: int | None = None, follow: bool = False,
    block_seconds: float = 5.0,
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The stream's entries from `since_ms` (or its first), for `reconciler events`; with
    `follow`, then every entry added, until cancelled. Nothing is remembered between calls."""
    client: redis.Redis = redis.Redis.from_url(
        redis_url, decode_responses=True, socket_connect_timeout=5,
        socket_timeout=block_seconds + 5)
    cursor = "0-0" if not since_ms or since_ms <= 0 else _before(f"{since_ms}-0")
    block = int(block_seconds * 1000) if follow else None
    try:
        end = None if follow else _entries([[stream, await client.xrevrange(stream, count=1)]])
        last = _id(end[0][0]) if end else None
        while True:
            entries = _entries(await client.xread({stream: cursor}, count=500, block=block))
            for stream_id, fields in entries:
                if last is not None and _id(stream_id) > last:
                    return
                yield stream_id, fields
                cursor = stream_id
            if not follow and (not entries or (last is not None and _id(cursor) >= last)):
                return
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()
