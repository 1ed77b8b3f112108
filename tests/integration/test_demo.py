"""The README's first command: the incident converges on the embedded stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def test_demo_converges_on_the_embedded_stack() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "demo", "--interval", "1.5", "--until-converged",
         "--timeout", "90"],
        env=env, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "converged" in out
    assert "event instance.removed" in out and "reason=duplicate_number" in out
    assert "event instance.disconnected" in out and "reason=device_removed" in out
    assert "event instance.connected" in out
    assert "ms after the close (passes run every" in out
    assert "/metrics" in out and "status page at http://127.0.0.1:" in out


def test_the_demo_prints_how_to_explain_its_orphan_and_ctrl_c_removes_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["TMPDIR"] = str(tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "demo", "--interval", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    for line in demo.stdout:
        if "ask why" in line:
            command = next(demo.stdout).strip()
            break
    # The command it prints answers with the delete, its guards and the event workers got.
    explained = subprocess.run(
        command.replace("reconciler explain", f"{sys.executable} -m reconciler explain", 1),
        shell=True, env=env, capture_output=True, text=True, timeout=60, check=False)
    demo.send_signal(signal.SIGINT)
    assert explained.returncode == 0, explained.stderr
    assert "every guard of SPEC 4.3 passed" in explained.stdout
    assert "instance.removed with event_id" in explained.stdout
    assert "delete" in explained.stdout and "duplicate_number" in explained.stdout
    out, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, out
    assert "removing the embedded stack" in out
    # Only pgserver's shared lock file may stay (under the runtime folder it shares).
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("runtime-")] == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path) not in ps.stdout
