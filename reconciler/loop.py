"""The daemon's loop: passes on a jittered timer and at once on a hint, until told to stop.

The timer runs from the start of one pass to the start of the next, so that each server is read
once per interval however long a pass takes (SPEC 7: the load on Evolution per interval does not
depend on how the servers are spread over replicas).

Hints (SPEC 4.5: the triggers' NOTIFYs, webhooks, hints other replicas pass on) go to the work
queue of `targeted`, which reconciles each instance alone; passes stay on the interval. A server
taken over from a replica that died wakes a pass at once. On stop the loop is out within
`RECONCILER_SHUTDOWN_SECONDS` (SPEC 7): the pass is cancelled, an action already sent to
Evolution gets 60% of the budget to finish and be recorded (`shutdown.Grace`), releasing the
leases what is left.
"""

from __future__ import annotations

import random

import anyio
import structlog

from reconciler.controller import Controller
from reconciler.leadership import LEASE_RENEW_EVERY
from reconciler.store import StoreError

log = structlog.get_logger()

ACTIONS_SHARE = 0.6
RELEASE_SHARE = 0.9


async def run_forever(controller: Controller, stop: anyio.Event) -> None:
    settings = controller.settings
    health = controller.recorder.health
    wake = anyio.Event()
    current_pass = anyio.CancelScope()

    async def stop_when_told() -> None:
        await stop.wait()
        budget = settings.shutdown_seconds
        controller.leadership.release_deadline = anyio.current_time() + budget * RELEASE_SHARE
        controller.grace.begin(budget * ACTIONS_SHARE)
        current_pass.cancel()

    async def hints() -> None:
        """NOTIFYs: into the work queue, or, without one, a pass at once."""
        while True:
            try:
                async with controller.store.memory.listen_hints() as received:
                    async for hint in received:
                        log.info("hint", source=hint.source, server=hint.server or None,
                                 instance=hint.name)
                        if targeted is None or not targeted.offer(hint):
                            wake.set()
            except StoreError as exc:
                log.warning("hint listener failed; retrying", error=str(exc))
                await anyio.sleep(LEASE_RENEW_EVERY)

    async def pass_when_hints_need_one() -> None:
        assert targeted is not None
        while True:
            await targeted.wake_pass.wait()
            targeted.wake_pass = anyio.Event()
            wake.set()

    targeted = controller.targeted
    async with controller.leadership.leading(), anyio.create_task_group() as tg:
        tg.start_soon(hints)
        tg.start_soon(stop_when_told)
        if targeted is not None:
            tg.start_soon(targeted.serve)
            tg.start_soon(pass_when_hints_need_one)
        while not stop.is_set():
            wake = anyio.Event()  # a NOTIFY during the pass triggers the next one at once
            controller.leadership.gained = anyio.Event()
            health.tick()
            started = anyio.current_time()
            with current_pass:
                await _pass_that_never_stops_the_loop(controller)
                await controller.leadership.hand_back_surplus()
            current_pass = anyio.CancelScope()
            health.tick()
            interval = settings.interval_seconds * random.uniform(0.9, 1.1)
            with anyio.move_on_after(interval - (anyio.current_time() - started)):
                async with anyio.create_task_group() as waiters:
                    async def wait_for(event: anyio.Event) -> None:
                        await event.wait()
                        waiters.cancel_scope.cancel()

                    waiters.start_soon(wait_for, wake)
                    waiters.start_soon(wait_for, stop)
                    waiters.start_soon(wait_for, controller.leadership.gained)
        tg.cancel_scope.cancel()


async def _pass_that_never_stops_the_loop(controller: Controller) -> None:
    """A bug in one pass is logged and counted, and the next pass starts from fresh reads."""
    try:
        await controller.run_pass()
    except Exception:
        log.exception("pass failed unexpectedly")
        controller.recorder.crashed(controller.leadership.held)
