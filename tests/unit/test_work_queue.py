"""The work queue (SPEC 4.5): one entry per (server, name), a rate per server, backoff per name."""

from __future__ import annotations

import anyio

from reconciler.hints import Hint, WorkQueue


async def test_a_burst_for_one_name_is_one_entry_and_hints_meanwhile_one_more() -> None:
    depths: list[int] = []
    queue = WorkQueue(1000, on_depth=depths.append)
    for source in ("webhook", "row", "webhook"):
        queue.put("s1", "a", source)
    queue.put("s1", "b", "tombstone")
    queue.put("s2", "a", "webhook")
    assert queue.depth == 3
    first = await queue.take("s1")
    assert (first.name, first.sources) == ("a", {"webhook", "row"})
    queue.put("s1", "a", "webhook")  # arrives while "a" is reconciled
    assert (await queue.take("s1")).name == "b"
    queue.done(first, ok=True)
    again = await queue.take("s1")
    assert again.name == "a" and again.first_at >= first.first_at
    assert depths[-1] == 1  # s2's entry is still waiting


async def test_each_server_is_drained_at_its_rate() -> None:
    queue = WorkQueue(20)
    for i in range(6):
        queue.put("s1", f"n{i}", "webhook")
    started = anyio.current_time()
    for _ in range(6):
        queue.done(await queue.take("s1"), ok=True)
    assert anyio.current_time() - started >= 5 / 20 * 0.95


async def test_backoff_doubles_while_failing() -> None:
    queue = WorkQueue(1000, backoff_base=0.05)
    queue.put("s1", "a", "webhook")
    entry = await queue.take("s1")
    waits = []
    for _ in range(3):
        failed_at = anyio.current_time()
        queue.done(entry, ok=False)
        with anyio.fail_after(2):
            entry = await queue.take("s1")
        waits.append(anyio.current_time() - failed_at)
    assert waits[0] < waits[1] < waits[2] and waits[2] >= 0.15, waits


def test_a_hint_survives_the_trip_through_notify_and_garbage_does_not() -> None:
    hint = Hint("webhook", "s1", "clinic-x", passed_on=True)
    assert Hint.from_json(hint.to_json()) == hint
    for payload in ("{", "[]", '{"source": "mail", "name": "x"}', '{"source": "row"}'):
        assert Hint.from_json(payload) is None
