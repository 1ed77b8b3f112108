"""Named steps of a pass where the crash and takeover tests break in (failpoints, as etcd has).

Every step between two effects (a call to Evolution, a commit, a publish) is named here, so that
the tests can enumerate them all: kill the process there (`EVOLUTION_RECONCILER_FAILPOINT=<step>`
makes the first arrival at that step SIGKILL the process), or run a test's hook there in-process
(take the lease, change a row). Inactive, a step costs one set and one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

ENV = "EVOLUTION_RECONCILER_FAILPOINT"

DELETE_STEPS = (
    "delete.intent.before",
    "delete.intent.after",
    "delete.logout.before",
    "delete.logout.after",
    "delete.call.before",
    "delete.call.after",
    "delete.verify.before",
    "delete.confirm.before",
    "delete.confirm.after",
)
"""A delete: intent committed, logout and delete answered, listing read, removal committed."""
MARK_STEPS = ("mark.before", "mark.after")
FLAG_STEPS = ("flag.before", "flag.after")
PASS_STEPS = (
    "memory.save.before",
    "memory.save.after",
    "publish.before",
    "publish.after",
)
"""After the actions: the memory saved, then the outbox relayed (`publish.after`: an event is on
Redis and not yet marked published)."""
STEPS = (*DELETE_STEPS, *MARK_STEPS, *FLAG_STEPS, *PASS_STEPS)

Hook = Callable[[], Awaitable[None]]
_hooks: dict[str, Hook] = {}
_armed = {os.environ.get(ENV, "")} - {""}


async def reached(step: str) -> None:
    """Called by the pass at `step`; does nothing unless a test armed it."""
    if step in _armed:
        _armed.discard(step)
        os.kill(os.getpid(), signal.SIGKILL)
    hook = _hooks.get(step)
    if hook is not None:
        await hook()


@contextmanager
def hooked(step: str, hook: Hook) -> Iterator[None]:
    """Run `hook` every time a pass reaches `step`, while the block runs (in-process tests)."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    _hooks[step] = hook
    try:
        yield
    finally:
        _hooks.pop(step, None)
