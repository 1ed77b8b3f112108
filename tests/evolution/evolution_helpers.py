"""Paths to the facts about real servers, and small helpers the Evolution tests share."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from reconciler.evolution.client import EvolutionClient
from reconciler.observability import Metrics
from reconciler.simulator import Simulator

FACTS = Path(__file__).resolve().parents[1] / "fixtures" / "evolution-api"
"""A copy of shared/evolution-api's wire facts, so the suite runs from any clone."""
RECORDED = FACTS / "recorded-v2.3.6"
PAYLOADS = FACTS / "payloads"

StartSimulator = Callable[..., Awaitable[Simulator]]
MakeClient = Callable[..., EvolutionClient]


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def count(metrics: Metrics, endpoint: str, code: str, server: str = "sim") -> float:
    """How many requests `evolution_requests_total` recorded for that endpoint and code."""
    value = metrics.registry.get_sample_value(
        "evolution_reconciler_evolution_requests_total",
        {"server": server, "endpoint": endpoint, "code": code})
    return value or 0.0


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Wait for a condition on a server, polling it; fail after `within` seconds."""
    with anyio.fail_after(within):
        while not await condition():  # noqa: ASYNC110 (remote state: nothing to wait on)
            await anyio.sleep(0.02)
