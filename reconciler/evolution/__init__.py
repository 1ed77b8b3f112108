"""The Evolution API adapter: a client for v1 and v2 servers and their parsers."""

from reconciler.evolution.client import EvolutionClient
from reconciler.evolution.errors import EvolutionError, NeedsLogout, OperatorError, TransientError

__all__ = ["EvolutionClient", "EvolutionError", "NeedsLogout", "OperatorError", "TransientError"]
