"""What became of the deletes a pass attempted, folded back into memory.

A delete is remembered from the moment it is decided, before any call, with the one event id its
removal will be published under (SPEC 5): a call that failed or timed out may still have deleted
the instance, and a crash may come at any point. Evolution answers a delete before it has cleaned
up, so only a later unfiltered listing proves it: until then the memory keeps "delete requested",
and `orphans` confirms it (and `instance.removed` is published) once the server stops listing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from uuid import UUID

from reconciler.model import Delete, DeleteResult, InstanceMemory, Memory

_FIRST_RETRY = timedelta(seconds=30)
_LONGEST_RETRY = timedelta(hours=1)


def delete_backoff(attempts: int) -> timedelta:
    """30 s after the first attempt, doubling, at most an hour."""
    doublings = min(max(attempts, 1) - 1, 8)
    return min(_FIRST_RETRY * (1 << doublings), _LONGEST_RETRY)


def intent_to_delete(
    entry: InstanceMemory | None, action: Delete, event_id: UUID, now: datetime
) -> InstanceMemory:
    """The memory written before the first call of a delete: requested, under `event_id`."""
    entry = entry or InstanceMemory(action.server, action.instance_name, first_seen=now)
    return replace(
        entry,
        delete_requested_at=entry.delete_requested_at or now,
        delete_reason=action.reason,
        delete_event_id=event_id,
    )


def after_attempt(
    entry: InstanceMemory | None, action: Delete, result: DeleteResult, now: datetime
) -> InstanceMemory | None:
    """The memory after one attempt; None once the removal is verified (nothing more is owed)."""
    if result is DeleteResult.VERIFIED:
        return None
    entry = entry or InstanceMemory(action.server, action.instance_name, first_seen=now)
    attempts = entry.delete_attempts + 1
    return replace(
        entry,
        delete_attempts=attempts,
        next_delete_at=now + delete_backoff(attempts),
        delete_requested_at=entry.delete_requested_at or now,
        delete_reason=action.reason,
        delete_event_id=action.event_id or entry.delete_event_id,
    )


def record_outcomes(
    memory: Memory, outcomes: Sequence[tuple[Delete, DeleteResult]], now: datetime
) -> Memory:
    instances = dict(memory.instances)
    tombstones = dict(memory.tombstones)
    for action, result in outcomes:
        key = (action.server, action.instance_name)
        if result is DeleteResult.VERIFIED:
            tombstones.pop(action.instance_name, None)
        after = after_attempt(instances.get(key), action, result, now)
        if after is None:
            instances.pop(key, None)
        else:
            instances[key] = after
    return replace(memory, instances=instances, tombstones=tombstones)
