"""The Evolution API adapter: a client for v1 and v2 servers, their parsers, and a simulator."""

from reconciler.evolution.client import EvolutionClient
from reconciler.evolution.errors import EvolutionError

__all__ = ["EvolutionClient", "EvolutionError"]
