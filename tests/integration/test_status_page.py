"""`GET /` in a real browser (headless Chromium), and `reconciler audit` with its filters."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from reconciler.wiring import serving
from tests.integration.conftest import Env, clinic_name, controller_for

CHROMIUM = shutil.which("chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=412,1400")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium(url: str, tmp_path: Path, *args: str) -> str:
    assert CHROMIUM, "chromium is missing: .ci/run installs it (apt-get install chromium)"
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    profile.mkdir()
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


async def test_the_page_shows_servers_drift_and_actions_escaped_in_a_browser(
        env: Env, tmp_path: Path) -> None:
    keeper = clinic_name(age=timedelta(days=30))
    env.sim.add(keeper, state="open", owner_jid="5511912345678@s.whatsapp.net")
    await env.add_row(keeper)
    orphan = clinic_name(age=timedelta(days=3))
    env.sim.add(orphan, state="close")
    missing = clinic_name()
    await env.add_row(missing)
    hostile = "clinic-<b>bold</b><script>alert(1)</script>"
    env.sim.add(hostile, state="open")
    port = free_port()
    async with controller_for(env, env.sim,
                              RECONCILER_MANAGED_PATTERN="^clinic-.*$") as controller, \
            serving(controller, "127.0.0.1", port):
        await controller.run_pass()
        requests_before = len(env.sim.requests)
        url = f"http://127.0.0.1:{port}/"
        async with httpx.AsyncClient() as client:
            raw = (await client.get(url)).text
        dom = await asyncio.to_thread(chromium, url, tmp_path, "--dump-dom")
        shot = tmp_path / "status-page.png"
        await asyncio.to_thread(chromium, url, tmp_path, f"--screenshot={shot}")
        assert len(env.sim.requests) == requests_before, "the page asked Evolution something"
    assert shot.stat().st_size > 1000
    assert '<meta http-equiv="refresh"' in raw and "<script>" not in raw
    for text in ("default", "v2", "2.3.6", "orphan", "missing", "unmanaged", "mark_missing",
                 "delete", orphan, missing, "outbox:"):
        assert text in dom, text
    assert "&lt;b&gt;bold&lt;/b&gt;&lt;script&gt;" in dom  # shown as text, not markup
    assert "<b>bold</b>" not in dom and "alert(1)</script>" not in dom
    assert "5511912345678" not in raw and str(env.sim.url) not in raw


async def test_audit_filters_and_flags(env: Env) -> None:
    keeper = clinic_name(age=timedelta(days=30))
    env.sim.add(keeper, state="open", owner_jid="5511912345678@s.whatsapp.net")
    await env.add_row(keeper)
    orphans = [clinic_name(age=timedelta(days=3)) for _ in range(2)]
    for name in orphans:
        env.sim.add(name, state="close")
    await env.add_row(clinic_name(), status="connected")  # missing
    assert env.cli("once", RECONCILER_MODE="enforce", RECONCILER_PROTECTED=orphans[1],
                   RECONCILER_ORPHAN_CONFIRMATIONS="1").returncode == 0
    await env.sql(f'UPDATE "{env.names.schema}".audit_log SET at = now() - interval \'2 hours\''
                  " WHERE action = 'mark_missing'")
    code, rows = env.cli_json("audit")
    assert code == 0
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    assert {(r["action"], r["outcome"]) for r in rows} == {
        ("delete", "ok"), ("delete", "blocked"), ("mark_missing", "ok")}
    _, recent = env.cli_json("audit", "--since", "90m")
    assert {r["action"] for r in recent} == {"delete"}
    _, blocked = env.cli_json("audit", "--outcome", "blocked")
    assert [(r["instance_name"], r["guard"]) for r in blocked] == [(orphans[1], "protected")]
    _, of_one = env.cli_json("audit", "--instance", orphans[0], "--action", "delete")
    assert [r["instance_name"] for r in of_one] == [orphans[0]] and of_one[0]["event_id"]
    _, one = env.cli_json("audit", "--limit", "1")
    assert len(one) == 1 and one[0]["id"] == rows[0]["id"]
    proc = env.cli("audit")
    assert proc.returncode == 0 and orphans[0] in proc.stdout and "EVENT ID" in proc.stdout
    await env.sql(f'INSERT INTO "{env.names.schema}".audit_log (server, instance_name, action,'
                  " reason, outcome) VALUES ('default', $1, 'flag', 'duplicate_row', 'ok')",
                  "clinic-x\n1  default  forged  delete  ok")
    lines = env.cli("audit").stdout.splitlines()
    assert any("clinic-x\\n1" in line for line in lines)
    assert not any(line.startswith("1  default  forged") for line in lines)
    for flag, value in (("--since", "15x"), ("--since", "0s"), ("--limit", "0"),
                        ("--outcome", "maybe")):
        bad = env.cli("audit", flag, value)
        assert bad.returncode == 2 and flag in bad.stderr, bad.stderr


@pytest.mark.parametrize("text", ["90s", "15m", "2h", "7d"])
def test_durations(text: str) -> None:
    from reconciler.audit import duration

    assert duration(text) == {"90s": 90, "15m": 900, "2h": 7200, "7d": 604800}[text]
