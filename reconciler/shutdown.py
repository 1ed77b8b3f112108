"""Stopping within `RECONCILER_SHUTDOWN_SECONDS`, whatever a server is doing (SPEC 7).

On SIGTERM the pass is cancelled at once (reads in flight included), except for the sections that
act on Evolution: a delete already sent is let finish and be recorded, but only until the
shutdown budget runs out. Anything cut short there is safe, because a delete's intent and event id
were committed before its first call: the next leader verifies and publishes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class Grace:
    """Shields the actions in flight from a stop, for at most the time `begin` grants."""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._scopes: set[anyio.CancelScope] = set()

    @property
    def stopping(self) -> bool:
        return self._deadline != math.inf

    @contextmanager
    def shielded(self) -> Iterator[anyio.CancelScope]:
        """A section that a stop does not interrupt until the grace ends; check the scope's
        `cancel_called` after it: True means it was cut short."""
        with anyio.CancelScope(shield=True, deadline=self._deadline) as scope:
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    def begin(self, seconds: float) -> None:
        """The stop: sections in flight (and any started later) end within `seconds`."""
        self._deadline = min(self._deadline, anyio.current_time() + seconds)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._deadline)
