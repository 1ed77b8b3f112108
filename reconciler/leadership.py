"""Which servers this replica leads, and how the replicas share them (SPEC 7).

Each replica heartbeats its row in `replicas`; a replica takes a free lease while it leads fewer
than servers / live replicas rounded down, one more (up to the share, rounded up) only for a
server that stayed free since its last look, and hands the surplus beyond the share back after
a pass: N replicas lead servers/N each, give or take one. Each replica prefers a different order
of the servers (rendezvous hashing), so that replicas starting together do not all race for the
same ones. A pass never reads `held` while it runs: it copies the tokens when it starts
(`tokens()`), so a lease lost or renewed under a new epoch fences the rest of that pass off.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

import anyio
import structlog

from reconciler.observability import Metrics
from reconciler.store import LeaseStore, LeaseToken, StoreError

log = structlog.get_logger()

LEASE_TTL = 15.0
LEASE_RENEW_EVERY = 5.0
REPLICA_LIVE_WITHIN = 15.0


class Leadership:
    def __init__(self, leases: LeaseStore, servers: Iterable[str], metrics: Metrics,
                 holder: str | None = None) -> None:
        self.leases = leases
        self.metrics = metrics
        self.holder = holder or f"reconciler-{uuid.uuid4().hex[:12]}"
        self.servers = tuple(sorted(servers, key=self._preference))
        """In this replica's order of preference."""
        self.held: dict[str, LeaseToken] = {}
        """The live leases, renewed in the background."""
        self.share = len(self.servers)
        """How many servers this replica may lead (servers / live replicas, rounded up)."""
        self.fair = len(self.servers)
        """How many it takes without waiting (servers / live replicas, rounded down)."""
        self._free_before: set[str] = set()
        self.release_deadline: float | None = None
        """While stopping: when releasing must be over (the leases expire on their own)."""
        self.member = True
        """A replica of the daemon (heartbeats, takes its share); `once` is not one."""
        self.gained = anyio.Event()
        """Set when a renewal took a server over: the loop starts a pass at once (failover)."""

    def _preference(self, server: str) -> bytes:
        return hashlib.sha256(f"{self.holder}\0{server}".encode()).digest()

    def tokens(self) -> Mapping[str, LeaseToken]:
        """The tokens a pass starts with and fences every write and call by."""
        return dict(self.held)

    async def refresh(self, *, take_over: bool = False) -> None:
        """Heartbeat, renew what we lead, take free leases up to our share (everything, with
        `take_over`: an operator's `once`, which is no member and takes even live leases);
        export `leader{server}` and `replicas`."""
        stayed_free = await self._stayed_free() if self.member else set()
        for server in self.servers:
            token = self.held.get(server)
            try:
                if token is not None and await self.leases.renew(token, LEASE_TTL):
                    continue
                self.held.pop(server, None)
                new = None
                if take_over or self._may_take(server, stayed_free):
                    new = await self.leases.acquire(server, self.holder, LEASE_TTL,
                                                    take_over=take_over)
            except StoreError as exc:
                log.warning("lease refresh failed", server=server, error=str(exc))
                self.held.pop(server, None)
                new = None
            if new is not None:
                if token is None or token.epoch != new.epoch:
                    log.info("leading server", server=server, epoch=new.epoch)
                    self.gained.set()
                self.held[server] = new
        self._export()

    def _may_take(self, server: str, stayed_free: set[str]) -> bool:
        if len(self.held) < self.fair:
            return True
        return len(self.held) < self.share and server in stayed_free

    async def _stayed_free(self) -> set[str]:
        """Heartbeat, then the servers nobody led at this look nor at the previous one: those
        the replicas below their fair number did not want."""
        try:
            live = await self.leases.heartbeat(self.holder, REPLICA_LIVE_WITHIN)
            free = await self.leases.unled(list(self.servers))
        except StoreError as exc:
            log.warning("heartbeat failed", error=str(exc))
            return set()
        self.share = math.ceil(len(self.servers) / live)
        self.fair = len(self.servers) // live
        self.metrics.replicas.set(live)
        before, self._free_before = self._free_before, free
        return free & before

    async def hand_back_surplus(self) -> None:
        """After a pass: release the leases beyond our share (a replica joined), least
        preferred first, so that the newcomer can take them."""
        surplus = [s for s in self.servers if s in self.held][self.share:]
        for server in surplus:
            token = self.held.pop(server)
            try:
                await self.leases.release(token)
                log.info("handed a lease back", server=server, share=self.share)
            except StoreError as exc:
                log.warning("lease release failed", server=server, error=str(exc))
        if surplus:
            self._export()

    def _export(self) -> None:
        for server in self.servers:
            self.metrics.leader.labels(server=server).set(1 if server in self.held else 0)

    @asynccontextmanager
    async def leading(self, *, take_over: bool = False) -> AsyncIterator[None]:
        """Hold (and keep renewing) the leases for as long as the block runs; release them after,
        so a standby or the daemon takes over at once instead of after the lease expires."""

        async def renew() -> None:
            while True:
                await anyio.sleep(LEASE_RENEW_EVERY)
                await self.refresh()

        self.member = not take_over
        await self.refresh(take_over=take_over)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(renew)
                yield
                tg.cancel_scope.cancel()
        finally:
            with anyio.move_on_after(self._release_budget(), shield=True):
                await self.release()

    def _release_budget(self) -> float:
        if self.release_deadline is None:
            return LEASE_TTL
        return max(0.1, self.release_deadline - anyio.current_time())

    async def release(self) -> None:
        for token in list(self.held.values()):
            try:
                await self.leases.release(token)
            except StoreError as exc:
                log.warning("lease release failed", server=token.server, error=str(exc))
            self.metrics.leader.labels(server=token.server).set(0)
        self.held.clear()
        if self.member:
            try:
                await self.leases.leave(self.holder)
            except StoreError as exc:
                log.warning("leaving the replicas failed", error=str(exc))
