"""Time one `EvolutionClient.read()` over N simulated instances (real HTTP, loopback).

    python benchmarks/bench_read.py [--instances 10000] [--version 2.3.6] [--probes]
                                    [--probe-rps 10]

The simulator runs in its own process (`--seed N`: 3/5 open, 1/5 closed by `device_removed`,
1/5 never paired), so that the figures are the client's alone. By default the server exposes
`/metrics` (2.3.3 and later); `--probes` turns it off, so live states come from `connectionState`
probes under the budget (`--probe-rps`, 30 s of it per pass). Prints the wall time and peak RSS
of one read, the peak Python memory of a second, traced read (tracemalloc slows it down), and the
requests the first read made.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import time
import tracemalloc

import anyio
import httpx

from reconciler.evolution.client import EvolutionClient
from reconciler.model import LiveState, ServerInventory
from reconciler.observability import Metrics
from reconciler.settings import ServerConfig

API_KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the simulator exited")
        try:
            httpx.get(f"{url}/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the simulator did not come up")


def _requests(metrics: Metrics) -> dict[str, int]:
    counts: dict[str, int] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "evolution_reconciler_evolution_requests_total" and sample.value:
                endpoint = sample.labels["endpoint"]
                counts[endpoint] = counts.get(endpoint, 0) + int(sample.value)
    return counts


async def _read(url: str, desired: list[str], probe_rps: float,
                traced: bool) -> tuple[ServerInventory, float, int, Metrics]:
    metrics = Metrics(["bench"])
    server = ServerConfig("bench", url, API_KEY)
    async with EvolutionClient(server, metrics=metrics, probe_rps=probe_rps) as client:
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        read = await client.read(want_live=desired)
        wall = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
        tracemalloc.stop()
    if not isinstance(read, ServerInventory):
        raise SystemExit(f"read failed: {read.error}")
    return read, wall, peak, metrics


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def bench(url: str, instances: int, probe_rps: float) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"apikey": API_KEY}, timeout=120) as http:
        names = [row["name"] for row in (await http.get("/instance/fetchInstances")).json()]
    assert len(names) == instances, len(names)
    desired = names[: instances * 19 // 20]
    rss_before = _rss_mib()
    read, wall, _, metrics = await _read(url, desired, probe_rps, traced=False)
    rss_after = _rss_mib()
    _, traced_wall, peak, _ = await _read(url, desired, probe_rps, traced=True)
    states: dict[str, int] = {}
    for instance in read.instances:
        states[instance.live.value] = states.get(instance.live.value, 0) + 1
    requests = _requests(metrics)
    print(f"instances listed:     {len(read.instances)} ({read.api_line} {read.version})")
    print(f"live states:          {dict(sorted(states.items()))}")
    print(f"wall time:            {wall:.3f} s")
    print(f"peak RSS:             {rss_after:.1f} MiB (+{rss_after - rss_before:.1f} MiB during"
          " the read, after one listing was decoded already)")
    print(f"peak Python memory:   {peak / 2**20:.1f} MiB (tracemalloc, a second read:"
          f" {traced_wall:.2f} s with tracing)")
    print(f"Evolution requests:   {sum(requests.values())} {dict(sorted(requests.items()))}")
    unknown = states.get(LiveState.UNKNOWN.value, 0)
    if unknown:
        print(f"unknown live states:  {unknown} (probed over later passes, within the budget)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--version", default="2.3.6")
    parser.add_argument("--probes", action="store_true", help="the server has no /metrics")
    parser.add_argument("--probe-rps", type=float, default=10.0)
    args = parser.parse_args()
    port = _free_port()
    command = [sys.executable, "-m", "reconciler.simulator", "--port", str(port),
               "--api-key", API_KEY, "--version", args.version, "--seed", str(args.instances)]
    if not args.probes:
        command.append("--metrics")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_serving(url, process, within=120)
        anyio.run(bench, url, args.instances, args.probe_rps)
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
