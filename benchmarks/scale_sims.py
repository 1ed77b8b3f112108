"""Many simulated Evolution servers in one process, for `bench_scale.py` (loopback only).

    python benchmarks/scale_sims.py --servers 50 --instances 200 --api-key K

Prints one JSON line `{"servers": [{"name", "url", "instances": [...]}, ...]}` once every server
listens, then reads commands on stdin, one per line: `orphan SERVER` adds an instance no row
names (created two days ago) to that server and prints its name as a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import anyio

from reconciler.simulator import Simulator


def _name(created: datetime) -> str:
    return f"clinic-{uuid.uuid4()}-{int(created.timestamp() * 1000)}"


async def main(servers: int, instances: int, api_key: str) -> None:
    created = datetime.now(UTC) - timedelta(days=30)
    async with AsyncExitStack() as stack:
        sims: dict[str, Simulator] = {}
        listing = []
        for s in range(servers):
            sim = await stack.enter_async_context(
                Simulator(api_key=api_key, client_name=f"bench-{s}", metrics_enabled=True))
            names = []
            for i in range(instances):
                name = _name(created + timedelta(seconds=s * instances + i))
                sim.add(name, state="open", created_at=created,
                        owner_jid=f"55{11_000_000_000 + s * 100_000 + i}@s.whatsapp.net")
                names.append(name)
            server = f"evo-{s:02d}"
            sims[server] = sim
            listing.append({"name": server, "url": sim.url, "instances": names})
        print(json.dumps({"servers": listing}), flush=True)
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            command, _, server = line.strip().partition(" ")
            if command == "orphan" and server in sims:
                name = _name(datetime.now(UTC) - timedelta(days=2))
                sims[server].add(name, state="close", created_at=datetime.now(UTC)
                                 - timedelta(days=2))
                print(json.dumps({"orphan": name, "server": server}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--api-key", default="bench-key")
    args = parser.parse_args()
    anyio.run(main, args.servers, args.instances, args.api_key)
