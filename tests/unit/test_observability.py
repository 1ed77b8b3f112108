"""Metrics exist from the first scrape; health follows the loop's ticks."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from reconciler.model import DriftKind, Guard
from reconciler.observability import Health, Metrics


def samples(metrics: Metrics) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample.labels)
    return found


def test_every_series_that_can_exist_is_exported_from_the_start() -> None:
    found = samples(Metrics(["br-1", "br-2"]))
    drift = {(s["server"], s["kind"]) for s in found["evolution_reconciler_drift_instances"]}
    assert drift == {(server, k.value) for server in ("br-1", "br-2") for k in DriftKind}
    guards = {s["guard"] for s in found["evolution_reconciler_guard_blocked_total"]}
    assert guards == {g.value for g in Guard}
    assert len(found["evolution_reconciler_actions_total"]) == 2 * 4 * 4
    for name in ("desired_instances", "invalid_rows", "outbox_pending", "build_info",
                 "leader", "server_degraded", "last_success_timestamp_seconds",
                 "reconcile_total", "reconcile_errors_total", "events_published_total",
                 "reconcile_duration_seconds_count", "observed_instances"):
        assert f"evolution_reconciler_{name}" in found, name


def test_health_fails_when_the_loop_stops_ticking() -> None:
    health = Health(interval_seconds=5.0)
    assert health.alive()
    health.tick()
    assert health.alive()
    health.last_tick = time.monotonic() - 16
    assert not health.alive()
    assert not health.ready


def test_what_belongs_to_no_server_is_reported_under_the_first_one() -> None:
    metrics = Metrics(["br-2", "br-1"])
    assert metrics.server_label("") == "br-1"
    assert metrics.server_label("br-2") == "br-2"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_is_alive_exactly_three_intervals_after_a_tick() -> None:
    clock = Clock()
    health = Health(interval_seconds=1.0, clock=clock)
    assert health.alive(), "alive before the loop's first tick"
    health.tick()
    clock.now += 3.0
    assert health.alive()
    clock.now += 0.001
    assert not health.alive()
    health.tick()
    assert health.alive()


def test_health_scales_with_the_interval() -> None:
    clock = Clock()
    health = Health(interval_seconds=30.0, clock=clock)
    health.tick()
    clock.now += 89.9
    assert health.alive()
    clock.now += 0.2
    assert not health.alive()
