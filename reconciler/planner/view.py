"""One pass's inputs, indexed once, and the ownership rules every decision shares.

Unmanaged instances are dropped from `managed` here, so no later rule can count or touch them; their
only trace is the `unmanaged` drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter
from uuid import UUID

from reconciler.model import (
    MAX_INSTANCE_NAME,
    DesiredInstance,
    DesiredState,
    Drift,
    DriftKind,
    InstanceMemory,
    LiveState,
    Memory,
    ObservedInstance,
    Policy,
    ServerInventory,
    ServerRead,
)
from reconciler.names import instance_key
from reconciler.planner.scope import Scope

Key = tuple[str, str]
"""(server, instance name): how memory and actions address one instance."""

_ROW_ID = attrgetter("id.int")
"""A row's id as its integer: the same order as the UUIDs', without their Python `__lt__`."""
_NAME = attrgetter("name")
_OPEN = LiveState.OPEN


def is_managed(policy: Policy, name: str) -> bool:
    return len(name) <= MAX_INSTANCE_NAME and policy.managed_pattern.fullmatch(name) is not None


def is_protected(policy: Policy, name: str) -> bool:
    """`search`, not `fullmatch`: settings anchors plain names; protecting errs on the safe side."""
    return any(p.search(name) for p in policy.protected)


def org_from_name(policy: Policy, name: str) -> UUID | None:
    match = policy.managed_pattern.fullmatch(name)
    if match is None or "org" not in match.re.groupindex or match.group("org") is None:
        return None
    try:
        return UUID(match.group("org"))
    except ValueError:
        return None


@dataclass(frozen=True)
class PassView:
    """Everything one plan() decides from; built by `build_view`, never mutated."""

    policy: Policy
    now: datetime
    memory: Memory
    desired: tuple[DesiredInstance, ...]
    rows_by_name: Mapping[str, tuple[DesiredInstance, ...]]
    """Desired rows by instance name, each tuple ordered by row id."""
    managed: Mapping[str, tuple[ObservedInstance, ...]]
    """Complete reads only: server -> its managed instances, one per name, ordered by name."""
    observed: Mapping[str, Mapping[str, ObservedInstance]]
    """`managed` by name: server -> name -> instance, ordered by name."""
    first: Mapping[str, ObservedInstance]
    """Managed instance name -> its copy on the first server (by server) that lists it."""
    copies: Mapping[str, tuple[ObservedInstance, ...]]
    """Managed names that several servers list -> their copies, ordered by server (a name that
    one server lists has only its copy in `first`: no tuple per instance)."""
    listed: frozenset[str]
    """Every name (managed or not) that some complete read lists."""
    listed_on: Mapping[str, frozenset[str]]
    listed_keys: frozenset[str]
    """The keys of the listed names that have surrounding blanks (the others are their own)."""
    desired_keys: frozenset[str]
    claimed: frozenset[str]
    """Keys that rows which could not be read may be naming (`DesiredState.claimed`)."""
    copies_by_key: Mapping[str, tuple[ObservedInstance, ...]]
    """The copies of every managed name with a key, for the keys some blanked managed name has
    (a key no such name has is only its own name's), ordered by name then server."""
    unmanaged: tuple[ObservedInstance, ...]
    failed: frozenset[str]
    """Servers whose read failed: nothing is decided from them, their memory is left alone."""
    removals: Mapping[str, tuple[InstanceMemory, ...]]
    """By server read completely, ordered by key: input memory entries of deletes requested
    earlier whose name its listing no longer holds (`orphans` confirms them; none for a scope)."""
    scope: Scope | None = None
    """Set for a targeted reconcile (SPEC 4.5): the view holds only the scope's names."""
    recent_deletions: Mapping[str, int] = field(default_factory=dict)
    """Deletions per server already made within the sliding window (blast radius, SPEC 4.5)."""

    @property
    def desired_total(self) -> int:
        """Desired rows of the whole fleet, also when the view holds only a scope."""
        n = len(self.desired)
        return self.scope.desired_total(n) if self.scope else n

    def managed_total(self, server: str) -> int:
        n = len(self.managed.get(server, ()))
        return self.scope.managed_total(server, n) if self.scope else n

    @property
    def complete(self) -> bool:
        return not self.failed

    def is_desired(self, name: str) -> bool:
        """By the one name rule (`names.instance_key`): a row spelling the name with the blanks
        a server trimmed still owns the instance."""
        return name in self.rows_by_name or instance_key(name) in self.desired_keys

    def is_claimed(self, name: str) -> bool:
        """A row that could not be read may own it: not to be deleted (SPEC 4.3 rule 5)."""
        return bool(self.claimed) and instance_key(name) in self.claimed

    def copies_named(self, name: str) -> tuple[ObservedInstance, ...]:
        """The copies of exactly this managed name, ordered by server."""
        several = self.copies.get(name)
        if several is not None:
            return several
        inst = self.first.get(name)
        return () if inst is None else (inst,)

    def copies_of(self, name: str) -> tuple[ObservedInstance, ...]:
        """The managed instances a row's name refers to, by the one name rule."""
        if name in self.first:
            return self.copies_named(name)
        key = instance_key(name)
        return self.copies_by_key.get(key) or self.copies_named(key)

    def judged(self, name: str) -> ObservedInstance | None:
        """The copy a row's status is judged by: of `copies_of(name)`, a live one, else the
        first (by server); None when no server lists it."""
        inst = self.first.get(name)
        if inst is None:
            referred = self.copies_of(name)
            return _live_or_first(referred) if referred else None
        several = self.copies.get(name)
        return inst if several is None else _live_or_first(several)

    def is_listed(self, name: str) -> bool:
        if name in self.listed:
            return True
        key = instance_key(name)
        return key in self.listed or key in self.listed_keys

    def organization_id(self, name: str, row: DesiredInstance | None = None) -> UUID | None:
        """SPEC 5: the desired row's, else the tombstone's, else the name's `org` group."""
        rows = (row,) if row is not None else self.rows_by_name.get(name, ())
        tombstone = self.memory.tombstones.get(name)
        for candidate in (
            *(r.organization_id for r in rows),
            tombstone.organization_id if tombstone else None,
        ):
            if candidate is not None:
                return candidate
        return org_from_name(self.policy, name)


def build_view(
    desired: DesiredState,
    reads: Sequence[ServerRead],
    memory: Memory,
    policy: Policy,
    now: datetime,
    scope: Scope | None = None,
    recent_deletions: Mapping[str, int] | None = None,
) -> PassView:
    """One pass over each input; a name's key is computed once, and sorted only where an order
    is promised (at 10,000 instances every step per instance counts)."""
    failed = frozenset(r.server for r in reads if not isinstance(r, ServerInventory))
    rows: dict[str, tuple[DesiredInstance, ...]] = {}
    for row in sorted(desired.instances, key=_ROW_ID):
        named = rows.get(row.instance_name)
        rows[row.instance_name] = (row,) if named is None else (*named, row)
    managed: dict[str, dict[str, ObservedInstance]] = {}
    listed_on: dict[str, set[str]] = {}
    unmanaged: dict[Key, ObservedInstance] = {}
    for read in reads:
        if not isinstance(read, ServerInventory) or read.server in failed:
            continue
        server = read.server
        ours = managed.setdefault(server, {})
        names = listed_on.setdefault(server, set())
        names.update(map(_NAME, read.instances))
        for inst in read.instances:
            if inst.server != server:
                inst = replace(inst, server=server)
            name = inst.name
            if is_managed(policy, name):
                ours.setdefault(name, inst)
            else:
                unmanaged.setdefault((server, name), inst)
    observed = {s: {n: ours[n] for n in sorted(ours)} for s, ours in managed.items()}
    first, copies = _copies(observed)
    listed = frozenset().union(*listed_on.values())
    blanked = {name: key for name in listed if (key := instance_key(name)) != name}
    spellings: dict[str, list[str]] = {}
    for name, key in blanked.items():
        if name in first:
            spellings.setdefault(key, [key] if key in first else []).append(name)
    return PassView(
        policy=policy,
        now=now,
        memory=memory,
        desired=desired.instances,
        rows_by_name=rows,
        managed={s: tuple(listed.values()) for s, listed in observed.items()},
        observed=observed,
        first=first,
        copies=copies,
        listed=listed,
        listed_on={s: frozenset(names) for s, names in listed_on.items()},
        listed_keys=frozenset(blanked.values()),
        desired_keys=frozenset(map(instance_key, rows)),
        claimed=desired.claimed,
        copies_by_key={
            key: tuple(c for n in sorted(names) for c in copies.get(n) or (first[n],))
            for key, names in spellings.items()},
        unmanaged=tuple(unmanaged[k] for k in sorted(unmanaged)),
        failed=failed,
        # removals are verified by unfiltered listings only (SPEC 4.3), never by a scope's
        removals=_removals(memory, listed_on) if scope is None else {},
        scope=scope,
        recent_deletions=dict(recent_deletions or {}),
    )


def _copies(
    observed: Mapping[str, Mapping[str, ObservedInstance]],
) -> tuple[Mapping[str, ObservedInstance], dict[str, tuple[ObservedInstance, ...]]]:
    """`first` and `copies`: one server's listing is its own `first`."""
    servers = sorted(observed)
    if len(servers) == 1:
        return observed[servers[0]], {}
    first: dict[str, ObservedInstance] = {}
    several: dict[str, list[ObservedInstance]] = {}
    for server in servers:
        for name, inst in observed[server].items():
            seen = first.get(name)
            if seen is None:
                first[name] = inst
            else:
                several.setdefault(name, [seen]).append(inst)
    return first, {name: tuple(copies) for name, copies in several.items()}


def _live_or_first(copies: tuple[ObservedInstance, ...]) -> ObservedInstance:
    """A row's status is judged by a live copy where a server has one."""
    return next((c for c in copies if c.live is _OPEN), copies[0])


def _removals(
    memory: Memory, listed_on: Mapping[str, set[str]]
) -> dict[str, tuple[InstanceMemory, ...]]:
    unlisted = [
        key for key, entry in memory.instances.items()
        if entry.delete_requested_at is not None and key[0] in listed_on
        and entry.instance_name not in listed_on[key[0]]
    ]
    by_server: dict[str, list[InstanceMemory]] = {}
    for key in sorted(unlisted):
        by_server.setdefault(key[0], []).append(memory.instances[key])
    return {s: tuple(entries) for s, entries in by_server.items()}


def unmanaged_drift(view: PassView) -> tuple[Drift, ...]:
    """Someone else's instances: reported, never counted elsewhere, never touched."""
    return tuple(Drift(i.server, i.name, DriftKind.UNMANAGED) for i in view.unmanaged)
