"""A save writes only what changed, and leaves the tables as replacing the memory would."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.model import InstanceMemory, LiveState, Memory, PassCounts
from reconciler.store.cache import RowCache
from reconciler.store.changes import Key, MemoryChanges, Touched, WriteLog, memory_changes
from reconciler.store.rows import observation_row

SERVERS = ("br-1", "br-2", "br-3")
NAMES = ("clinic-a", "clinic-b", "clinic-c", "clinic-d")
KEYS = tuple(itertools.product(SERVERS, NAMES))
GROUPS = ("duplicate_number:1", "duplicate_number:2", "duplicate_number:3")
T0 = datetime(2025, 11, 15, 16, 45, tzinfo=UTC)
EVENT = uuid.UUID("0b9f6c1e-6a55-4a3e-9d4e-6f0d2a3b1c77")


@dataclass(frozen=True)
class Tables:
    """A model of the four tables a save writes, as rows."""

    observations: dict[Key, tuple[object, ...]]
    counts: dict[str, PassCounts]
    streaks: dict[str, int]
    duplicates: frozenset[str]


def loaded(memory: Memory) -> Tables:
    """The tables a load of `memory` read."""
    return Tables({k: observation_row(m) for k, m in memory.instances.items()},
                  dict(memory.last_counts), dict(memory.missing_streaks),
                  memory.reported_duplicates)


def replaced(tables: Tables, new: Memory, servers: set[str], fleet: bool,
             keep: set[Key]) -> Tables:
    """What `MemoryTables.save` without a baseline leaves: the memory of `servers` replaced."""
    observations = {k: row for k, row in tables.observations.items()
                    if k[0] not in servers or k in keep}
    observations.update((k, observation_row(m)) for k, m in new.instances.items()
                        if m.server in servers and k not in keep)
    counts = {s: c for s, c in tables.counts.items() if s not in servers}
    counts.update((s, c) for s, c in new.last_counts.items() if s in servers)
    if not fleet:
        return Tables(observations, counts, tables.streaks, tables.duplicates)
    return Tables(observations, counts, dict(new.missing_streaks), new.reported_duplicates)


def applied(tables: Tables, changes: MemoryChanges) -> Tables:
    """The tables after `changes`, as `MemoryTables._write` applies them."""
    observations = dict(tables.observations)
    for key in changes.observations_removed:
        observations.pop(key, None)
    observations.update(((m.server, m.instance_name), observation_row(m))
                        for m in changes.observations_written)
    counts = {s: c for s, c in tables.counts.items() if s not in changes.counts_removed}
    counts.update(changes.counts_written)
    streaks = {n: s for n, s in tables.streaks.items() if n not in changes.streaks_removed}
    streaks.update(changes.streaks_written)
    duplicates = (tables.duplicates - set(changes.duplicates_removed)) | set(
        changes.duplicates_added)
    return Tables(observations, counts, streaks, duplicates)


def _entry(draw: st.DrawFn, key: Key) -> InstanceMemory:
    return InstanceMemory(
        server=key[0], instance_name=key[1],
        first_seen=T0 + timedelta(seconds=draw(st.integers(0, 1))),
        orphan_streak=draw(st.integers(0, 1)),
        last_live=draw(st.sampled_from((LiveState.OPEN, LiveState.UNKNOWN))),
        delete_event_id=draw(st.sampled_from((None, EVENT))))


@st.composite
def _memory(draw: st.DrawFn) -> Memory:
    return Memory(
        instances={k: _entry(draw, k) for k in draw(st.sets(st.sampled_from(KEYS)))},
        last_counts={s: PassCounts(draw(st.integers(0, 1)), 1)
                     for s in draw(st.sets(st.sampled_from(SERVERS)))},
        missing_streaks={n: draw(st.integers(1, 2))
                         for n in draw(st.sets(st.sampled_from(NAMES)))},
        reported_duplicates=frozenset(draw(st.sets(st.sampled_from(GROUPS)))))


@st.composite
def _next(draw: st.DrawFn, baseline: Memory) -> Memory:
    """What a pass might remember next: each entry kept (the very object), copied (equal, not
    the same object), changed, dropped or new."""
    instances: dict[Key, InstanceMemory] = {}
    for key in KEYS:
        before = baseline.instances.get(key)
        how = draw(st.sampled_from(("same", "copy", "fresh", "absent")))
        if how == "fresh" or (how != "absent" and before is None):
            instances[key] = _entry(draw, key)
        elif how == "same" and before is not None:
            instances[key] = before
        elif how == "copy" and before is not None:
            instances[key] = replace(before)
    other = draw(_memory())
    return Memory(
        instances=instances,
        last_counts=draw(st.sampled_from((baseline.last_counts, other.last_counts))),
        missing_streaks=draw(st.sampled_from((baseline.missing_streaks,
                                              other.missing_streaks))),
        reported_duplicates=draw(st.sampled_from((baseline.reported_duplicates,
                                                  other.reported_duplicates))))


@st.composite
def _at_save(draw: st.DrawFn, baseline: Memory) -> tuple[Touched, Tables]:
    """Writes landed since the load (decisions, hints): the keys they touched, and the tables
    they left, which differ from the load at those keys only (in any way)."""
    tables = loaded(baseline)
    touched = draw(st.sets(st.sampled_from(KEYS)))
    groups = draw(st.sets(st.sampled_from(GROUPS)))
    observations = dict(tables.observations)
    for key in touched:
        if draw(st.booleans()):
            observations[key] = observation_row(_entry(draw, key))
        else:
            observations.pop(key, None)
    flagged = {g for g in groups if draw(st.booleans())}
    duplicates = (tables.duplicates - groups) | flagged
    return (Touched(frozenset(touched), frozenset(groups)),
            replace(tables, observations=observations, duplicates=duplicates))


@st.composite
def _saves(draw: st.DrawFn) -> tuple[Memory, Memory, Touched, Tables, set[str], bool, set[Key]]:
    baseline = draw(_memory())
    touched, tables = draw(_at_save(baseline))
    return (baseline, draw(_next(baseline)), touched, tables,
            draw(st.sets(st.sampled_from(SERVERS))), draw(st.booleans()),
            draw(st.sets(st.sampled_from(KEYS))))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_saves())
def test_the_changes_leave_the_tables_as_the_full_replace(
    case: tuple[Memory, Memory, Touched, Tables, set[str], bool, set[Key]],
) -> None:
    baseline, new, touched, tables, servers, fleet, keep = case

    changes = memory_changes(new, baseline, touched, servers=servers, fleet=fleet, keep=keep)

    assert applied(tables, changes) == replaced(tables, new, servers, fleet, keep)
    written = [(m.server, m.instance_name) for m in changes.observations_written]
    assert not set(written) & set(changes.observations_removed)
    for key in (*written, *changes.observations_removed):
        assert key[0] in servers and key not in keep, "only the saved servers, never `keep`"
    for m in changes.observations_written:
        key = (m.server, m.instance_name)
        assert key in touched.observations or baseline.instances.get(key) != m, "only changes"
    assert {s for s, _ in changes.counts_written} | set(changes.counts_removed) <= servers
    if not fleet:
        assert not (changes.streaks_written or changes.streaks_removed)
        assert not (changes.duplicates_added or changes.duplicates_removed)


def test_an_unchanged_memory_writes_nothing() -> None:
    baseline = Memory(
        instances={k: InstanceMemory(server=k[0], instance_name=k[1], first_seen=T0)
                   for k in KEYS},
        last_counts={"br-1": PassCounts(3, 3)}, missing_streaks={"clinic-x": 1},
        reported_duplicates=frozenset(GROUPS))
    copied = replace(baseline, instances={k: replace(m) for k, m in baseline.instances.items()})

    for new in (baseline, copied):
        assert memory_changes(new, baseline, Touched(), servers=SERVERS,
                              fleet=True) == MemoryChanges()


def test_a_touched_key_is_written_even_when_unchanged() -> None:
    entry = InstanceMemory(server="br-1", instance_name="clinic-a", first_seen=T0)
    memory = Memory(instances={("br-1", "clinic-a"): entry})
    touched = Touched(frozenset({("br-1", "clinic-a"), ("br-1", "clinic-b")}),
                      frozenset({"duplicate_number:1"}))

    changes = memory_changes(memory, memory, touched, servers=["br-1"], fleet=True)

    assert changes == MemoryChanges(observations_removed=(("br-1", "clinic-b"),),
                                    observations_written=(entry,),
                                    duplicates_removed=("duplicate_number:1",))


def test_the_write_log_notes_keys_once_their_transaction_is_over() -> None:
    log = WriteLog()
    mark = log.mark()
    with log.writing(observations=[("br-1", "clinic-a")]):
        assert log.since(mark) == Touched(), "noted when it is over, not before"
    with pytest.raises(RuntimeError), log.writing(duplicates=["duplicate_number:1"]):
        raise RuntimeError("rolled back, or not: noted either way")

    assert log.since(mark) == Touched(frozenset({("br-1", "clinic-a")}),
                                      frozenset({"duplicate_number:1"}))
    later = log.mark()
    assert log.since(mark) is None, "a later load forgot what the earlier one needed"
    assert log.since(later) == Touched()


def test_the_row_cache_decodes_a_row_once_and_holds_the_last_read_only() -> None:
    decoded: list[tuple[str, int]] = []

    def decode(row: tuple[str, int]) -> str:
        decoded.append(row)
        return f"{row[0]}={row[1]}"

    cache: RowCache[tuple[str, int], str] = RowCache(decode)
    assert cache.decoded([("a", 1), ("b", 1)]) == ["a=1", "b=1"]
    assert cache.decoded([("b", 1), ("a", 1)]) == ["b=1", "a=1"]
    assert decoded == [("a", 1), ("b", 1)]

    assert cache.decoded([("a", 2), ("b", 1)]) == ["a=2", "b=1"]
    assert decoded[2:] == [("a", 2)], "a changed row is a new row"
    assert cache.decoded([("a", 1)]) == ["a=1"]
    assert decoded[3:] == [("a", 1)], "the rows of earlier reads are forgotten"
