"""One pass's inputs, indexed once, and the ownership rules every decision shares.

Unmanaged instances are dropped from `managed` here, so no later rule can count or touch them; their
only trace is the `unmanaged` drift.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from reconciler.model import (
    MAX_INSTANCE_NAME,
    DesiredInstance,
    DesiredState,
    Drift,
    DriftKind,
    InstanceMemory,
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
    copies: Mapping[str, tuple[ObservedInstance, ...]]
    """Managed instance name -> its copies on complete reads, ordered by server."""
    listed: frozenset[str]
    """Every name (managed or not) that some complete read lists."""
    listed_on: Mapping[str, frozenset[str]]
    listed_keys: frozenset[str]
    desired_keys: frozenset[str]
    claimed: frozenset[str]
    """Keys that rows which could not be read may be naming (`DesiredState.claimed`)."""
    copies_by_key: Mapping[str, tuple[ObservedInstance, ...]]
    unmanaged: tuple[ObservedInstance, ...]
    failed: frozenset[str]
    """Servers whose read failed: nothing is decided from them, their memory is left alone."""
    remembered: Mapping[str, tuple[InstanceMemory, ...]]
    """Input memory entries by server."""
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
        return instance_key(name) in self.desired_keys

    def is_claimed(self, name: str) -> bool:
        """A row that could not be read may own it: not to be deleted (SPEC 4.3 rule 5)."""
        return instance_key(name) in self.claimed

    def copies_of(self, name: str) -> tuple[ObservedInstance, ...]:
        """The managed instances a row's name refers to, by the one name rule."""
        return self.copies.get(name) or self.copies_by_key.get(instance_key(name), ())

    def is_listed(self, name: str) -> bool:
        return name in self.listed or instance_key(name) in self.listed_keys

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
    failed = frozenset(r.server for r in reads if not isinstance(r, ServerInventory))
    rows: dict[str, list[DesiredInstance]] = defaultdict(list)
    for row in sorted(desired.instances, key=lambda r: r.id):
        rows[row.instance_name].append(row)
    managed: dict[str, dict[str, ObservedInstance]] = {}
    listed_on: dict[str, set[str]] = {}
    unmanaged: dict[Key, ObservedInstance] = {}
    for read in reads:
        if not isinstance(read, ServerInventory) or read.server in failed:
            continue
        server = read.server
        managed.setdefault(server, {})
        listed_on.setdefault(server, set())
        for inst in read.instances:
            if inst.server != server:
                inst = replace(inst, server=server)
            listed_on[server].add(inst.name)
            if is_managed(policy, inst.name):
                managed[server].setdefault(inst.name, inst)
            else:
                unmanaged.setdefault((server, inst.name), inst)
    by_server = {s: tuple(v for _, v in sorted(names.items())) for s, names in managed.items()}
    copies: dict[str, list[ObservedInstance]] = defaultdict(list)
    for server in sorted(by_server):
        for inst in by_server[server]:
            copies[inst.name].append(inst)
    by_key: dict[str, list[ObservedInstance]] = defaultdict(list)
    for name in sorted(copies):
        by_key[instance_key(name)].extend(copies[name])
    remembered: dict[str, list[InstanceMemory]] = defaultdict(list)
    for key in sorted(memory.instances):
        remembered[key[0]].append(memory.instances[key])
    return PassView(
        policy=policy,
        now=now,
        memory=memory,
        desired=desired.instances,
        rows_by_name={name: tuple(rs) for name, rs in rows.items()},
        managed=by_server,
        copies={name: tuple(cs) for name, cs in copies.items()},
        listed=frozenset().union(*listed_on.values()),
        listed_on={s: frozenset(names) for s, names in listed_on.items()},
        listed_keys=frozenset(instance_key(n) for names in listed_on.values() for n in names),
        desired_keys=frozenset(instance_key(name) for name in rows),
        claimed=desired.claimed,
        copies_by_key={key: tuple(cs) for key, cs in by_key.items()},
        unmanaged=tuple(unmanaged[k] for k in sorted(unmanaged)),
        failed=failed,
        remembered={s: tuple(entries) for s, entries in remembered.items()},
        scope=scope,
        recent_deletions=dict(recent_deletions or {}),
    )


def unmanaged_drift(view: PassView) -> tuple[Drift, ...]:
    """Someone else's instances: reported, never counted elsewhere, never touched."""
    return tuple(Drift(i.server, i.name, DriftKind.UNMANAGED) for i in view.unmanaged)
