"""What became of the deletes a pass attempted, folded back into memory.

Evolution answers a delete before it has cleaned up, so only a later unfiltered listing proves it:
until then the instance's memory keeps "delete requested", and `orphans` confirms it (and
`instance.removed` is published) once the server stops listing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from reconciler.model import Action, ActionKind, DeleteResult, InstanceMemory, Memory

_FIRST_RETRY = timedelta(seconds=30)
_LONGEST_RETRY = timedelta(hours=1)


def delete_backoff(attempts: int) -> timedelta:
    """30 s after the first attempt, doubling, at most an hour."""
    doublings = min(max(attempts, 1) - 1, 8)
    return min(_FIRST_RETRY * (1 << doublings), _LONGEST_RETRY)


def record_outcomes(
    memory: Memory, outcomes: Sequence[tuple[Action, DeleteResult]], now: datetime
) -> Memory:
    instances = dict(memory.instances)
    tombstones = dict(memory.tombstones)
    for action, result in outcomes:
        if action.kind is not ActionKind.DELETE:
            continue
        key = (action.server, action.instance_name)
        if result is DeleteResult.VERIFIED:
            instances.pop(key, None)
            tombstones.pop(action.instance_name, None)
            continue
        entry = instances.get(key) or InstanceMemory(
            action.server, action.instance_name, first_seen=now
        )
        attempts = entry.delete_attempts + 1
        entry = replace(
            entry, delete_attempts=attempts, next_delete_at=now + delete_backoff(attempts)
        )
        if result is DeleteResult.UNVERIFIED:
            entry = replace(
                entry,
                delete_requested_at=entry.delete_requested_at or now,
                delete_reason=action.reason,
            )
        instances[key] = entry
    return replace(memory, instances=instances, tombstones=tombstones)
