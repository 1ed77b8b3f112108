"""`RECONCILER_DISCONNECT_AFTER_SECONDS=0`: no hysteresis, marked at the first observation."""

from __future__ import annotations

from datetime import timedelta

from reconciler.model import ActionKind, LiveState, Mode
from reconciler.settings import load_settings
from tests.planner.builders import inst, name, only, rows, run, server

ENV = {
    "RECONCILER_DATABASE_URL": "postgresql://app@db/app",
    "RECONCILER_REDIS_URL": "redis://cache",
    "RECONCILER_EVOLUTION_URL": "https://evo.example",
    "RECONCILER_EVOLUTION_API_KEY": "k",
    "RECONCILER_MODE": "enforce",
    "RECONCILER_DISCONNECT_AFTER_SECONDS": "0",
}


def test_a_transient_disconnect_is_marked_at_its_first_observation() -> None:
    policy = load_settings(ENV).policy()
    assert (policy.mode, policy.disconnect_after) == (Mode.ENFORCE, timedelta(0))
    plan = run(rows(name(1)), [server("s1", inst(name(1), LiveState.CONNECTING))], policy=policy)
    assert only(plan.actions).kind is ActionKind.MARK_DISCONNECTED
