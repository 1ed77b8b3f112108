"""`reconciler events`: JSON lines exactly as published, an escaped table, --since, --follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import anyio
import redis.asyncio as aioredis

from reconciler.events import EventPublisher, build_event, encode_event
from reconciler.model import EventType
from tests.consumer.conftest import removal


def cli(redis_url: str, stream: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(RECONCILER_REDIS_URL=redis_url, RECONCILER_EVENTS_STREAM=stream)
    return subprocess.run([sys.executable, "-m", "reconciler", "events", *args], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


async def test_json_is_exactly_what_was_published_and_the_table_escapes_names(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    forged = build_event(EventType.DISCONNECTED, instance_name="evil\nOK instance.connected",
                         organization_id=None, server="default", reason="logged_out",
                         occurred_at=datetime.now(UTC))
    events = [removal(0), forged]
    for event in events:
        await publisher.publish(event.payload())
    proc = cli(redis_url, stream, "--output", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [encode_event(e.payload()) for e in events]
    table = cli(redis_url, stream).stdout.splitlines()
    assert table[0].split() == ["OCCURRED_AT", "TYPE", "INSTANCE", "SERVER", "REASON",
                                "EVENT_ID"]
    assert len(table) == 3 and "evil\\nOK instance.connected" in table[2]
    assert str(forged.event_id) in table[2]


async def test_since_leaves_out_older_events_and_a_bad_duration_is_a_usage_error(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    client = aioredis.from_url(redis_url)
    try:
        old = json.dumps({"type": "instance.removed", "instance_name": "old"})
        await client.xadd(stream, {"event": old}, id="1000-0")  # 1970: older than any --since
    finally:
        await client.aclose()
    new = removal(1)
    await publisher.publish(new.payload())
    assert cli(redis_url, stream, "--since", "2h", "--output", "json").stdout.splitlines() \
        == [encode_event(new.payload())]
    assert len(cli(redis_url, stream, "--output", "json").stdout.splitlines()) == 2
    for bad in ("2 hours", "15", "-5m", "1w"):
        proc = cli(redis_url, stream, "--since", bad)
        assert proc.returncode == 2 and "--since" in proc.stderr, (bad, proc.stderr)
    disabled = cli(redis_url, "")
    assert disabled.returncode == 2 and "RECONCILER_EVENTS_STREAM" in disabled.stderr


async def test_follow_prints_events_as_they_are_published(
    redis_url: str, stream: str, publisher: EventPublisher
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(RECONCILER_REDIS_URL=redis_url, RECONCILER_EVENTS_STREAM=stream)
    first, later = removal(0), removal(1)
    await publisher.publish(first.payload())
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "events", "--follow",
                             "--output", "json"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        with anyio.fail_after(20):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert line.rstrip("\n") == encode_event(first.payload())
            await publisher.publish(later.payload())
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert line.rstrip("\n") == encode_event(later.payload())
    finally:
        proc.terminate()
        proc.wait(10)
