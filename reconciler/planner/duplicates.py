"""`duplicate_number`, `duplicate_name` and `duplicate_row`: flagged, published once per group.

Each group has a key in `Memory.reported_duplicates`; `instance.duplicate` is owed only while the
key is absent. Only `enforce` records a key (a dry run publishes nothing, so nothing was reported),
and a key whose group cleared is forgotten, so a reappearance is published again. A group that
merely cannot be seen because a server's read failed has not cleared.

A duplicate number's members that no row names are orphans and are deleted by `orphans`; here they
are only reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.model import (
    FLEET,
    Drift,
    DriftKind,
    Flag,
    LiveState,
    Mode,
    ObservedInstance,
)
from reconciler.planner.view import PassView

_OPEN = LiveState.OPEN
"""Bound once: an enum member read through its class is slow in a loop over every instance."""


@dataclass(frozen=True)
class _Group:
    key: str
    kind: DriftKind
    server: str
    instance_name: str
    flagged: bool
    """Whether this group owes an `instance.duplicate` (not every duplicate number does)."""


@dataclass(frozen=True)
class DuplicateDecision:
    drift: tuple[Drift, ...]
    flags: tuple[Flag, ...]
    reported: frozenset[str]


def decide_duplicates(view: PassView) -> DuplicateDecision:
    drift: list[Drift] = []
    groups: list[_Group] = []
    for finder in (_numbers, _names, _rows):
        found_drift, found_groups = finder(view)
        drift.extend(found_drift)
        groups.extend(found_groups)
    owed = [g for g in groups if g.flagged]
    present = {g.key for g in owed}
    flags = tuple(_flag(view, g) for g in owed if g.key not in view.memory.reported_duplicates)
    kept = {k for k in view.memory.reported_duplicates if k in present or _unseen(view, k)}
    if view.policy.mode is Mode.ENFORCE:
        kept |= present
    return DuplicateDecision(tuple(drift), flags, frozenset(kept))


def _unseen(view: PassView, key: str) -> bool:
    """Server-side groups cannot be judged cleared while a server's read failed."""
    return not view.complete and not key.startswith(f"{DriftKind.DUPLICATE_ROW}:")


def _numbers(view: PassView) -> tuple[list[Drift], list[_Group]]:
    """Live (OPEN) instances paired with one WhatsApp number, across every server."""
    first: dict[str, ObservedInstance] = {}
    by_number: dict[str, list[ObservedInstance]] = {}
    for listed in view.managed.values():
        for inst in listed:
            number = inst.number
            if inst.live is _OPEN and number:
                seen = first.get(number)
                if seen is None:
                    first[number] = inst
                else:
                    by_number.setdefault(number, [seen]).append(inst)
    drift: list[Drift] = []
    groups: list[_Group] = []
    for number in sorted(by_number):
        members = sorted(by_number[number], key=lambda m: (m.name, m.server))
        detail = f"{len(members)} live instances on one number"
        drift.extend(Drift(m.server, m.name, DriftKind.DUPLICATE_NUMBER, detail) for m in members)
        desired = sum(1 for m in members if view.is_desired(m.name))
        first_member = members[0]
        groups.append(_Group(f"{DriftKind.DUPLICATE_NUMBER}:{number}", DriftKind.DUPLICATE_NUMBER,
                             first_member.server, first_member.name, flagged=desired >= 2))
    return drift, groups


def _names(view: PassView) -> tuple[list[Drift], list[_Group]]:
    """One managed name listed by several servers: Evolution names are global to a database."""
    drift: list[Drift] = []
    groups: list[_Group] = []
    if len(view.managed) < 2:
        return drift, groups
    for name in sorted(view.copies):
        copies = view.copies[name]
        detail = "listed on " + ", ".join(c.server for c in copies)
        drift.extend(Drift(c.server, name, DriftKind.DUPLICATE_NAME, detail) for c in copies)
        groups.append(_Group(f"{DriftKind.DUPLICATE_NAME}:{name}", DriftKind.DUPLICATE_NAME,
                             copies[0].server, name, flagged=True))
    return drift, groups


def _rows(view: PassView) -> tuple[list[Drift], list[_Group]]:
    """Several desired rows naming one instance; each row is still handled on its own."""
    drift: list[Drift] = []
    groups: list[_Group] = []
    if len(view.rows_by_name) == len(view.desired):
        return drift, groups
    for name in sorted(n for n, rows in view.rows_by_name.items() if len(rows) > 1):
        servers = [c.server for c in view.copies_named(name)] or [FLEET]
        detail = f"{len(view.rows_by_name[name])} rows"
        drift.extend(Drift(s, name, DriftKind.DUPLICATE_ROW, detail) for s in servers)
        groups.append(_Group(f"{DriftKind.DUPLICATE_ROW}:{name}", DriftKind.DUPLICATE_ROW,
                             servers[0], name, flagged=True))
    return drift, groups


def _flag(view: PassView, group: _Group) -> Flag:
    return Flag(
        server=group.server,
        instance_name=group.instance_name,
        reason=group.kind.value,
        organization_id=view.organization_id(group.instance_name),
        group_key=group.key,
    )
