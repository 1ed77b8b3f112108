"""A targeted reconcile's scope (SPEC 4.5): plan() over a few names, with the rest of the fleet
known only by what the guards count over whole servers.

A hint names one instance, and its reconcile must decide as a pass would, in milliseconds at
10,000 instances: so plan() runs over a view restricted to the hinted names (their rows, their
fresh observation, their memory), and every count that a rule takes over a whole server (the
blast radius, the collapse baseline, the restart wave, the live numbers of the incident) comes
from the `Population` of the last complete pass, kept current by each targeted reconcile. The
rules themselves stay where they are; only their counts are fed from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from reconciler.model import (
    DesiredInstance,
    DesiredState,
    Memory,
    ObservedInstance,
    ServerInventory,
    ServerRead,
)


@dataclass(frozen=True)
class Standing:
    """One enabled row's part in its server's restart wave (`status.standing`)."""

    server: str
    connected: bool
    strained: bool


@dataclass(frozen=True)
class Population:
    """What the last complete pass saw, by name, for the counts of a targeted plan."""

    read_at: Mapping[str, datetime]
    """When each server's last complete listing was taken."""
    listing: Mapping[str, frozenset[str]]
    """Managed names each server's last complete listing held (never changed by a hint)."""
    observed: Mapping[str, Mapping[str, ObservedInstance]]
    """server -> managed name -> its latest observation (updated by targeted reads)."""
    rows: Mapping[str, tuple[DesiredInstance, ...]]
    """Desired rows by instance name (updated by point reads)."""
    standings: Mapping[str, tuple[Standing, ...]]
    """Row instance name -> its part in the restart wave."""
    live_numbers: Mapping[str, str] = field(default_factory=dict)
    """Desired instance name -> the number it is live on."""
    claimed: frozenset[str] = frozenset()
    invalid_rows: int = 0

    def servers_listing(self, name: str) -> tuple[str, ...]:
        return tuple(s for s in sorted(self.observed) if name in self.observed[s])


@dataclass(frozen=True)
class Scope:
    names: frozenset[str]
    population: Population
    max_listing_age: timedelta
    """A tombstone deletes only what a complete listing this young holds (SPEC 4.5)."""

    def desired_total(self, in_view: int) -> int:
        outside = sum(len(rows) for name, rows in self.population.rows.items()
                      if name not in self.names)
        return outside + in_view

    def managed_total(self, server: str, in_view: int) -> int:
        listed = self.population.observed.get(server, {})
        return sum(1 for name in listed if name not in self.names) + in_view

    def wave_outside(self, server: str) -> tuple[int, int]:
        """(connected, strained) rows of `server` outside the scope."""
        connected = strained = 0
        for name, parts in self.population.standings.items():
            if name in self.names:
                continue
            for part in parts:
                if part.server == server:
                    connected += part.connected
                    strained += part.strained
        return connected, strained

    def live_numbers_outside(self) -> frozenset[str]:
        return frozenset(n for name, n in self.population.live_numbers.items()
                         if name not in self.names)

    def listed_lately(self, server: str, name: str, now: datetime) -> bool:
        read_at = self.population.read_at.get(server)
        return (read_at is not None and now - read_at <= self.max_listing_age
                and name in self.population.listing.get(server, frozenset()))


def restricted(
    population: Population,
    names: frozenset[str],
    fresh: Sequence[ServerRead],
    rows: DesiredState,
    memory: Memory,
) -> tuple[DesiredState, list[ServerRead], Memory]:
    """plan()'s inputs for `names`: their point-read rows, the fresh reads, the population's
    observation of them on every other server, and their memory only."""
    fresh_servers = {r.server for r in fresh}
    reads: list[ServerRead] = list(fresh)
    for server in sorted(population.observed):
        if server in fresh_servers:
            continue
        listed = population.observed[server]
        reads.append(ServerInventory(
            server=server, api_line="", version=None, client_name=None,
            instances=tuple(listed[n] for n in sorted(names) if n in listed)))
    desired = DesiredState(rows.instances, claimed=population.claimed | rows.claimed)
    kept = Memory(
        instances={k: v for k, v in memory.instances.items() if k[1] in names},
        last_counts=memory.last_counts,
        missing_streaks=memory.missing_streaks,
        reported_duplicates=memory.reported_duplicates,
        tombstones={n: t for n, t in memory.tombstones.items() if n in names},
    )
    return desired, reads, kept
