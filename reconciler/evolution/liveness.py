"""Live state at scale (SPEC section 3), as pure decisions that `live.LiveReader` carries out.

A v2 listing reports the database column, which lags the session. The live state comes from the
server's `/metrics` (`evolution_instance_state`, one request) where it answers, else from
`connectionState` probes under a budget of `probe_rps` per second: each pass probes first the
instances whose listing row changed since their last probe, then those not probed for
`probe_interval`, then re-checks the ones last seen not connected, then everything else that is
overdue. A probe result is carried to later passes only while the row it was taken against is
unchanged and it is younger than `probe_interval`; otherwise the state is UNKNOWN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass

from reconciler.evolution.wire import live_state
from reconciler.model import LiveState, ObservedInstance

RECHECK_FRACTION = 0.1
"""An instance last seen not connected is re-probed after this fraction of the interval."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a listing row says about the session: when it changes, a probe is due at once."""

    stored_status: str | None
    owner_jid: str | None
    disconnect_code: int | None


def fingerprint(instance: ObservedInstance) -> Fingerprint:
    code = instance.disconnect.code if instance.disconnect else None
    return Fingerprint(instance.stored_status, instance.owner_jid, code)


@dataclass(frozen=True, slots=True)
class Probe:
    at: float
    state: LiveState
    fingerprint: Fingerprint


@dataclass(frozen=True)
class Bucket:
    """Probe tokens: refilled at `probe_rps`, spent one per probe."""

    tokens: float
    at: float


def refill(bucket: Bucket, now: float, rate: float, capacity: float) -> Bucket:
    return Bucket(min(capacity, bucket.tokens + max(0.0, now - bucket.at) * rate), now)


def _priority(
    name: str,
    fp: Fingerprint,
    want: Set[str],
    probe: Probe | None,
    previous: Set[str] | None,
    now: float,
    interval: float,
) -> int | None:
    wanted = name in want
    age = math.inf if probe is None else now - probe.at
    if wanted and probe is not None and probe.fingerprint != fp:
        return 0
    if wanted and probe is None and previous is not None and name not in previous:
        return 0
    if wanted and age >= interval:
        return 1
    if wanted and probe is not None and probe.state != LiveState.OPEN \
            and age >= interval * RECHECK_FRACTION:
        return 2
    if age >= interval:
        return 3
    return None


def choose_probes(
    listing: Mapping[str, Fingerprint],
    want: Set[str],
    probes: Mapping[str, Probe],
    previous: Set[str] | None,
    now: float,
    interval: float,
    budget: int,
) -> list[str]:
    """The instances to probe this pass, most urgent first, at most `budget` of them.

    `previous` is the set of names the last pass listed (None on the first pass: nothing is
    "new" then, everything is merely unprobed).
    """
    ranked: list[tuple[int, float, str]] = []
    for name, fp in listing.items():
        probe = probes.get(name)
        rank = _priority(name, fp, want, probe, previous, now, interval)
        if rank is not None:
            ranked.append((rank, -math.inf if probe is None else probe.at, name))
    ranked.sort()
    return [name for _, _, name in ranked[: max(0, budget)]]


def state_from_last_probe(probe: Probe | None, fp: Fingerprint, now: float,
                          interval: float) -> LiveState:
    """The live state to report for an instance from its last probe: UNKNOWN once the probe is
    older than the interval or the listing changed since (its fingerprint)."""
    if probe is None or probe.fingerprint != fp or now - probe.at >= interval:
        return LiveState.UNKNOWN
    return probe.state


def parse_connection_state(body: object) -> LiveState:
    """`{"instance": {"instanceName", "state"}}`; without `state` the instance is not loaded."""
    inner = body.get("instance") if isinstance(body, dict) else None
    return live_state(inner.get("state")) if isinstance(inner, dict) else LiveState.UNKNOWN


_SAMPLE = re.compile(r"^(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], value)


Sample = tuple[str, LiveState] | None
"""One `evolution_instance_state` line read: (instance, state), or nothing to count."""


def parse_sample(line: str) -> Sample:
    sample = _SAMPLE.match(line)
    if not sample:
        return None
    try:
        value = float(sample["value"])
    except ValueError:
        return None
    if value != 1:
        return None
    labels = {k: _unescape(v) for k, v in _LABEL.findall(sample["labels"])}
    name = labels.get("instance", labels.get("exported_instance"))
    return None if name is None else (name, live_state(labels.get("state")))


def parse_metrics(text: str, read: Callable[[str], Sample] = parse_sample
                  ) -> dict[str, LiveState] | None:
    """Live states from Evolution's `/metrics`; None when the text is not Evolution's exposition.

    An instance with no series, or with conflicting ones, is left out (UNKNOWN to the caller).
    `read` reads one state line (`parse_sample`, or a memo of it).
    """
    if "evolution_instances_total" not in text and "evolution_environment_info" not in text:
        return None
    found: dict[str, set[LiveState]] = {}
    for line in text.splitlines():
        if not line.startswith("evolution_instance_state{"):
            continue
        sample = read(line)
        if sample is not None:
            found.setdefault(sample[0], set()).add(sample[1])
    return {name: states.pop() for name, states in found.items() if len(states) == 1}


class SampleMemo:
    """`parse_sample` remembered for the lines of the last exposition: between two scrapes
    nearly every line is the same text."""

    def __init__(self) -> None:
        self._last: dict[str, Sample] = {}
        self._now: dict[str, Sample] = {}

    def read(self, line: str) -> Sample:
        sample = self._last[line] if line in self._last else parse_sample(line)
        self._now[line] = sample
        return sample

    def turn(self) -> None:
        """Keep only what this scrape read."""
        self._last, self._now = self._now, {}
