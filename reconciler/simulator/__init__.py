"""A simulated Evolution API server (every supported version), for tests, the demo and compose."""

from reconciler.simulator.server import ENDPOINTS, Simulator, seed
from reconciler.simulator.state import (
    VERSIONS,
    SimInstance,
    api_logout_object,
    device_removed_object,
)

__all__ = ["ENDPOINTS", "VERSIONS", "SimInstance", "Simulator", "api_logout_object",
           "device_removed_object", "seed"]
