"""The simulator's command line, for docker-compose, the benchmarks and manual use.

    python -m reconciler.simulator --port 8080 --api-key K --version 2.3.6 --seed 5
"""

from __future__ import annotations

import argparse
import os

from reconciler.simulator.server import ENDPOINTS, Simulator, seed
from reconciler.simulator.state import VERSIONS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler.simulator",
        description="A simulated Evolution API server (for docker-compose and manual use).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key", default=os.environ.get("EVOLUTION_SIM_API_KEY", "sim-key"))
    parser.add_argument("--version", default="2.3.6", help=f"one of {', '.join(VERSIONS)}")
    parser.add_argument("--client-name", default="evolution_exchange")
    parser.add_argument("--metrics", action="store_true", help="serve /metrics (2.3.3 and later)")
    parser.add_argument("--delete-delay", type=float, default=0.0,
                        help="seconds a deleted v2 instance stays listed")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="start with N platform-named instances")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="answer every request after this long (benchmarks)")
    args = parser.parse_args(argv)
    simulator = Simulator(api_key=args.api_key, version=args.version,
                          client_name=args.client_name, metrics_enabled=args.metrics,
                          delete_delay=args.delete_delay, host=args.host, port=args.port)
    seed(simulator, args.seed)
    if args.latency > 0:
        for endpoint in ENDPOINTS:
            simulator.fault(endpoint, delay=args.latency)
    simulator.run()


if __name__ == "__main__":
    main()
