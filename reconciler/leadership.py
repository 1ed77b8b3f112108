"""Which servers this replica leads: leases taken, renewed in the background, released (SPEC 7).

A pass never reads `held` while it runs: it copies the tokens when it starts (`tokens()`), so a
lease lost or renewed under a new epoch fences the rest of that pass off.
"""

from __future__ import annotations

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


class Leadership:
    def __init__(self, leases: LeaseStore, servers: Iterable[str], metrics: Metrics,
                 holder: str | None = None) -> None:
        self.leases = leases
        self.servers = tuple(servers)
        self.metrics = metrics
        self.holder = holder or f"reconciler-{uuid.uuid4().hex[:12]}"
        self.held: dict[str, LeaseToken] = {}
        """The live leases, renewed in the background."""
        self.release_deadline: float | None = None
        """While stopping: when releasing must be over (the leases expire on their own)."""

    def tokens(self) -> Mapping[str, LeaseToken]:
        """The tokens a pass starts with and fences every write and call by."""
        return dict(self.held)

    async def refresh(self, *, take_over: bool = False) -> None:
        """Renew what we lead, take what nobody leads (or everything, with `take_over`: an
        operator's `once`); export `leader{server}`."""
        for server in self.servers:
            token = self.held.get(server)
            try:
                if token is not None and await self.leases.renew(token, LEASE_TTL):
                    continue
                self.held.pop(server, None)
                new = await self.leases.acquire(server, self.holder, LEASE_TTL,
                                                      take_over=take_over)
            except StoreError as exc:
                log.warning("lease refresh failed", server=server, error=str(exc))
                self.held.pop(server, None)
                new = None
            if new is not None:
                if token is None or token.epoch != new.epoch:
                    log.info("leading server", server=server, epoch=new.epoch)
                self.held[server] = new
            self.metrics.leader.labels(server=server).set(1 if server in self.held else 0)

    @asynccontextmanager
    async def leading(self, *, take_over: bool = False) -> AsyncIterator[None]:
        """Hold (and keep renewing) the leases for as long as the block runs; release them after,
        so a standby or the daemon takes over at once instead of after the lease expires."""

        async def renew() -> None:
            while True:
                await anyio.sleep(LEASE_RENEW_EVERY)
                await self.refresh()

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
