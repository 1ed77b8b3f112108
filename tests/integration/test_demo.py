"""The README's first command: the incident converges on the embedded stack."""

from __future__ import annotations

import os
import subprocess
import sys


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
    assert "/metrics" in out
