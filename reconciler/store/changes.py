"""What a save must write: the memory of a pass against the memory it loaded.

A warm pass changes a handful of the fleet's entries, so `MemoryTables.save` writes those and
not the whole fleet. The table at save time is the loaded memory except where another write
(a decision, a hint) landed since the load: `WriteLog` names those keys, and `memory_changes`
always rewrites them, so that applying its changes leaves the table exactly as replacing the
memory of the saved servers wholesale would.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from reconciler.model import InstanceMemory, Memory, PassCounts

Key = tuple[str, str]
"""(server, instance name): an observation's primary key."""


@dataclass(frozen=True)
class Touched:
    """Keys written since a load by someone other than `save`: their rows are unknown."""

    observations: frozenset[Key] = frozenset()
    duplicates: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MemoryChanges:
    """Rows to remove and rows to (re)write; a written key is never also removed."""

    observations_removed: tuple[Key, ...] = ()
    observations_written: tuple[InstanceMemory, ...] = ()
    counts_removed: tuple[str, ...] = ()
    counts_written: tuple[tuple[str, PassCounts], ...] = ()
    streaks_removed: tuple[str, ...] = ()
    streaks_written: tuple[tuple[str, int], ...] = ()
    duplicates_removed: tuple[str, ...] = ()
    duplicates_added: tuple[str, ...] = ()


def memory_changes(
    new: Memory,
    baseline: Memory,
    touched: Touched,
    *,
    servers: Collection[str],
    fleet: bool,
    keep: Collection[Key] = (),
) -> MemoryChanges:
    """The writes that turn the table (`baseline` except at `touched`) into what replacing the
    memory of `servers` with `new` gives (`MemoryTables.save`): `keep` untouched, the other
    servers untouched, the fleet's memory only with `fleet`.

    The planner hands an unchanged entry back as the very object it was given, so `is` settles
    almost every entry; `==` the rest.
    """
    chosen = set(servers)
    kept = set(keep)
    dirty = touched.observations
    old = baseline.instances
    written: list[InstanceMemory] = []
    for key, entry in new.instances.items():
        if entry.server not in chosen or key in kept:
            continue
        before = old.get(key)
        if key in dirty or (before is not entry and before != entry):
            written.append(entry)
    removed = [key for key in (*old, *(k for k in dirty if k not in old))
               if key[0] in chosen and key not in kept and key not in new.instances]

    counts_removed: list[str] = []
    counts_written: list[tuple[str, PassCounts]] = []
    for server in sorted(chosen):
        counts = new.last_counts.get(server)
        if counts == baseline.last_counts.get(server):
            continue
        if counts is None:
            counts_removed.append(server)
        else:
            counts_written.append((server, counts))
    if not fleet:
        return MemoryChanges(tuple(removed), tuple(written), tuple(counts_removed),
                             tuple(counts_written))

    streaks, old_streaks = new.missing_streaks, baseline.missing_streaks
    reported, old_reported = new.reported_duplicates, baseline.reported_duplicates
    return MemoryChanges(
        tuple(removed), tuple(written), tuple(counts_removed), tuple(counts_written),
        streaks_removed=tuple(sorted(n for n in old_streaks if n not in streaks)),
        streaks_written=tuple(sorted((n, s) for n, s in streaks.items()
                                     if old_streaks.get(n) != s)),
        duplicates_removed=tuple(sorted((old_reported | touched.duplicates) - reported)),
        duplicates_added=tuple(sorted(reported - (old_reported - touched.duplicates))),
    )


class WriteLog:
    """The keys written outside `MemoryTables.save` since the last full load began.

    Shared by the roles that write observations or duplicate groups (`Store.connect` wires
    one), so that a save knows which rows may differ from the memory it was given. A key is
    noted once its transaction is over, committed or not: noting too many costs a write,
    noting too late would lose one.
    """

    def __init__(self) -> None:
        self._mark = 0
        self._observations: set[Key] = set()
        self._duplicates: set[str] = set()

    def mark(self) -> int:
        """A full load is about to read every row: forget what it will see, note from here."""
        self._mark += 1
        self._observations = set()
        self._duplicates = set()
        return self._mark

    def since(self, mark: int) -> Touched | None:
        """What was written since `mark`; None once a later mark forgot part of it."""
        if mark != self._mark:
            return None
        return Touched(frozenset(self._observations), frozenset(self._duplicates))

    @contextmanager
    def writing(
        self, *, observations: Iterable[Key] = (), duplicates: Iterable[str] = ()
    ) -> Iterator[None]:
        """Around a transaction writing these keys: noted when it is over, however it ends."""
        try:
            yield
        finally:
            self._observations.update(observations)
            self._duplicates.update(duplicates)
