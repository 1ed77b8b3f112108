"""Hypothesis strategies for the planner's inputs: desired rows, server reads, memories, policies.

Everything is drawn from small pools (three servers, a handful of names, three phone numbers, times
on the edges of the default thresholds) so that collisions, duplicates and boundary cases are
frequent and one example stays cheap to generate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

from hypothesis import strategies as st

from reconciler import planner
from reconciler.model import (
    DesiredInstance,
    DesiredState,
    InstanceMemory,
    LiveState,
    Memory,
    Mode,
    ObservedInstance,
    PassCounts,
    Plan,
    Policy,
    RowStatus,
    ServerInventory,
    ServerRead,
    ServerReadError,
    Tombstone,
)
from reconciler.reasons import INSTANCE_MISSING, classify

NOW = datetime(2025, 11, 15, 16, 45, tzinfo=UTC)
ORGS = (
    UUID("4e8ddba1-ad52-4613-9a03-ec64636b3f6c"),
    UUID("9b2f1c3d-0e4a-4b5c-8d6e-7f8091a2b3c4"),
)
SERVERS = ("s1", "s2", "s3")
MANAGED_NAMES = tuple(f"clinic-{org}-176322427277{i}" for org in ORGS for i in range(3))
UNMANAGED_NAMES = ("support-bot", "clinic-not-a-uuid-1", f"Clinic-{ORGS[0]}-1")
NAMES = MANAGED_NAMES + UNMANAGED_NAMES
NUMBERS = ("5511999990001", "5511999990002", "5511999990003")
PROTECTED_PATTERNS = (
    (),
    (re.compile(f"^{re.escape(MANAGED_NAMES[0])}$"),),
    (re.compile(f"^clinic-{ORGS[1]}-"),),
)
DEVICE_REMOVED = {
    "error": {"data": {"content": [{"tag": "conflict", "attrs": {"type": "device_removed"}}]}}
}

_OFFSETS = (0, 1, 119, 120, 121, 299, 300, 301, 3600)
"""Seconds, around the defaults of `disconnect_after` (120) and `orphan_grace` (300)."""


T = TypeVar("T")


def clinic_name(org: UUID = ORGS[0], ts: int = 1763224272772) -> str:
    return f"clinic-{org}-{ts}"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


@dataclass(frozen=True)
class Scenario:
    """One call of `plan()`."""

    desired: DesiredState
    reads: tuple[ServerRead, ...]
    memory: Memory
    policy: Policy
    now: datetime

    def plan(self) -> Plan:
        return planner.plan(self.desired, self.reads, self.memory, self.policy, self.now)


class _Digits:
    """One draw describes a whole value: a mixed-radix number read one choice at a time.

    Drawing every field separately made generating an example ten times slower than planning it.
    """

    def __init__(self, code: int) -> None:
        self._code = code

    def pick(self, pool: Sequence[T]) -> T:
        self._code, index = divmod(self._code, len(pool))
        return pool[index]


def _spreader(size: int) -> Callable[[int], _Digits]:
    """Hypothesis favours small integers; a Weyl step (a multiplier near size / golden ratio,
    coprime with size) spreads them over every digit. 0 still decodes to the first choice of each
    pool, so shrinking still ends somewhere simple."""
    step = max(1, int(size * 0.6180339887498949))
    while math.gcd(step, size) != 1:
        step += 1
    return lambda code: _Digits(code * step % size)


def _coded(build: Callable[[_Digits], T], *pools: Sequence[object]) -> st.SearchStrategy[T]:
    size = math.prod(len(p) for p in pools)
    spread = _spreader(size)
    return st.integers(0, size - 1).map(lambda code: build(spread(code)))


def _coded_lists(
    build: Callable[[_Digits], T], pools: Sequence[Sequence[object]], max_size: int
) -> st.SearchStrategy[list[T]]:
    """Up to `max_size` values in two draws: how many, and all of their choices at once."""
    size = math.prod(len(p) for p in pools) ** max_size
    spread = _spreader(size)

    def decode(count: int, code: int) -> list[T]:
        digits = spread(code)
        return [build(digits) for _ in range(count)]

    return st.builds(decode, st.integers(0, max_size), st.integers(0, size - 1))
_TIMES = tuple(ago(s) for s in _OFFSETS)
_MAYBE_TIMES = (None, *_TIMES)
_LIVES = tuple(LiveState)
_STORED = ("open", "connecting", "close", None)
_MAYBE_NUMBERS = (*NUMBERS, None)
_MAYBE_ORGS = (*ORGS, None)
_DISCONNECTS = (
    None,
    *(classify(code) for code in (401, 402, 403, 406, 408, 428, 440, 500, 515, 999)),
    classify(401, DEVICE_REMOVED),
    classify(None),
)


def _instance(d: _Digits) -> ObservedInstance:
    stored = d.pick(_STORED)
    number = d.pick(_MAYBE_NUMBERS)
    disconnect = d.pick(_DISCONNECTS)
    return ObservedInstance(
        server="",
        name=d.pick(NAMES),
        stored_status=stored,
        live=d.pick(_LIVES),
        owner_jid=f"{number}:12@s.whatsapp.net" if number else None,
        number=number,
        created_at=d.pick(_MAYBE_TIMES),
        disconnect=disconnect if stored == "close" else None,
    )


_INSTANCE_POOLS = (_STORED, _MAYBE_NUMBERS, _DISCONNECTS, NAMES, _LIVES, _MAYBE_TIMES)
OBSERVED = _coded(_instance, *_INSTANCE_POOLS)
"""An instance as a server lists it (`server` is set by the inventory that holds it)."""


def _inventory(server: str, instances: list[ObservedInstance]) -> ServerInventory:
    unique = {i.name: replace(i, server=server) for i in reversed(instances)}
    return ServerInventory(server, api_line="v2", version="2.3.6", client_name=server,
                           instances=tuple(reversed(unique.values())))


def inventories(server: str) -> st.SearchStrategy[ServerInventory]:
    return _coded_lists(_instance, _INSTANCE_POOLS, 6).map(lambda xs: _inventory(server, xs))


_INVENTORIES = {server: inventories(server) for server in SERVERS}
_SERVER_STATES = ("ok", "ok", "ok", "ok", "ok", "absent", "absent", "failed")
_READ_PLANS = _coded(lambda d: tuple(d.pick(_SERVER_STATES) for _ in SERVERS),
                     *(_SERVER_STATES for _ in SERVERS))


@st.composite
def server_reads(draw: st.DrawFn, failures: bool = True) -> tuple[ServerRead, ...]:
    """One read per server this replica leads (at least one); a few fail when `failures`."""
    states = draw(_READ_PLANS)
    if all(state == "absent" for state in states):
        states = ("ok", *states[1:])
    reads: list[ServerRead] = []
    for server, state in zip(SERVERS, states, strict=True):
        if state == "failed" and failures:
            reads.append(ServerReadError(server, "read_observed", "HTTP 500"))
        elif state != "absent":
            reads.append(draw(_INVENTORIES[server]))
    return tuple(reads)


_ENABLED = (True, True, True, True, False)
_ROW_STATUSES = (*(s.value for s in RowStatus), "paused")
_ROW_REASONS = (None, INSTANCE_MISSING, "connection_closed")


def _row(d: _Digits) -> DesiredInstance:
    status = d.pick(_ROW_STATUSES)
    reason = d.pick(_ROW_REASONS)
    return DesiredInstance(
        id=UUID(int=0),
        organization_id=d.pick(_MAYBE_ORGS),
        instance_name=d.pick(NAMES),
        enabled=d.pick(_ENABLED),
        status=status,
        disconnect_reason=reason if status == RowStatus.DISCONNECTED else None,
    )


_ROW_POOLS = (_ROW_STATUSES, _ROW_REASONS, _MAYBE_ORGS, NAMES, _ENABLED)
ROWS = _coded(_row, *_ROW_POOLS)
"""One integration row (its id is set by the desired state that holds it)."""


_CLAIMS = _coded_lists(lambda d: d.pick(NAMES), (NAMES,), 2)
"""Names that rows which could not be read may be claiming (keys by the one name rule)."""


def desired_states() -> st.SearchStrategy[DesiredState]:
    return st.builds(
        lambda rows, claimed: DesiredState(
            tuple(replace(r, id=UUID(int=i + 1)) for i, r in enumerate(rows)),
            claimed=frozenset(claimed),
        ),
        _coded_lists(_row, _ROW_POOLS, 7),
        st.just([]) | _CLAIMS,
    )


_STREAKS = (0, 1, 2, 3)
_DELETE_REASONS = ("orphan", "duplicate_number")
_ATTEMPTS = (0, 0, 1, 3)
_RETRIES = (-30, 0, 30)


def _memory_entry(d: _Digits) -> InstanceMemory:
    server, name = d.pick(SERVERS), d.pick(NAMES)
    streak, orphan_since = d.pick(_STREAKS), d.pick(_TIMES)
    requested, reason = d.pick(_MAYBE_TIMES), d.pick(_DELETE_REASONS)
    attempts, retry_in = d.pick(_ATTEMPTS), d.pick(_RETRIES)
    return InstanceMemory(
        server=server,
        instance_name=name,
        first_seen=d.pick(_TIMES),
        orphan_since=orphan_since if streak else None,
        orphan_streak=streak,
        not_connected_since=d.pick(_MAYBE_TIMES),
        last_live=d.pick(_LIVES),
        delete_requested_at=requested,
        delete_reason=reason if requested else None,
        delete_attempts=attempts,
        next_delete_at=NOW + timedelta(seconds=retry_in) if attempts else None,
    )


_ENTRY_POOLS = (SERVERS, NAMES, _STREAKS, _TIMES, _MAYBE_TIMES, _DELETE_REASONS, _ATTEMPTS,
                _RETRIES, _TIMES, _MAYBE_TIMES, _LIVES)
_COUNTS = range(13)
_DUPLICATE_KEYS = (
    *(f"duplicate_number:{n}" for n in NUMBERS),
    *(f"duplicate_name:{n}" for n in MANAGED_NAMES),
    *(f"duplicate_row:{n}" for n in NAMES),
)


def memories() -> st.SearchStrategy[Memory]:
    return st.builds(
        lambda entries, counts, streaks, reported, tombstones: Memory(
            instances={(e.server, e.instance_name): e for e in entries},
            last_counts=dict(counts),
            missing_streaks=dict(streaks),
            reported_duplicates=frozenset(reported),
            tombstones={t.instance_name: t for t in tombstones},
        ),
        _coded_lists(_memory_entry, _ENTRY_POOLS, 6),
        _coded_lists(lambda d: (d.pick(SERVERS), PassCounts(d.pick(_COUNTS), d.pick(_COUNTS))),
                     (SERVERS, _COUNTS, _COUNTS), 3),
        _coded_lists(lambda d: (d.pick(NAMES), d.pick(_STREAKS[1:])), (NAMES, _STREAKS[1:]), 2),
        _coded_lists(lambda d: d.pick(_DUPLICATE_KEYS), (_DUPLICATE_KEYS,), 3),
        _coded_lists(lambda d: Tombstone(d.pick(NAMES), d.pick(_MAYBE_ORGS), d.pick(_TIMES)),
                     (NAMES, _MAYBE_ORGS, _TIMES), 2),
    )


_MODES = tuple(Mode)
_GRACES = (timedelta(0), timedelta(seconds=300))
_CONFIRMATIONS = (1, 2, 3)
_MAX_DELETIONS = (0, 1, 2, 10)
_FRACTIONS = (0.0, 0.25, 0.5, 1.0)
_DISCONNECT_AFTER = (timedelta(0), timedelta(seconds=120))
_MASS_FRACTIONS = (0.5, 0.9)
_ALLOW_MASS = (False, False, False, True)


def _policy(d: _Digits) -> Policy:
    return Policy(
        mode=d.pick(_MODES),
        protected=d.pick(PROTECTED_PATTERNS),
        orphan_grace=d.pick(_GRACES),
        orphan_confirmations=d.pick(_CONFIRMATIONS),
        max_deletions=d.pick(_MAX_DELETIONS),
        max_deletion_fraction=d.pick(_FRACTIONS),
        disconnect_after=d.pick(_DISCONNECT_AFTER),
        mass_disconnect_fraction=d.pick(_MASS_FRACTIONS),
        allow_mass_deletion=d.pick(_ALLOW_MASS),
    )


def policies() -> st.SearchStrategy[Policy]:
    return _coded(_policy, _MODES, PROTECTED_PATTERNS, _GRACES, _CONFIRMATIONS, _MAX_DELETIONS,
                  _FRACTIONS, _DISCONNECT_AFTER, _MASS_FRACTIONS, _ALLOW_MASS)


_DESIRED = desired_states()
_MEMORY = st.just(Memory()) | memories()
_POLICY = policies()
_NOW = st.sampled_from((0, 0, 0, 1, 30, 600)).map(lambda s: NOW + timedelta(seconds=s))
"""Mostly NOW itself, so that the boundary offsets of every remembered time stay on the edge."""


@st.composite
def scenarios(draw: st.DrawFn, failures: bool = True) -> Scenario:
    # Fresh top-level copies: Hypothesis would otherwise print each value as the expression that
    # built it from its codes, which says nothing to a reader of a failing example.
    return Scenario(
        desired=replace(draw(_DESIRED)),
        reads=tuple(replace(r) for r in draw(server_reads(failures))),
        memory=replace(draw(_MEMORY)),
        policy=replace(draw(_POLICY)),
        now=draw(_NOW),
    )
