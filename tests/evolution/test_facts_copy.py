"""The vendored wire facts are the ones in shared/evolution-api, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from evolution_helpers import FACTS

SHARED = Path(__file__).resolve().parents[3] / "shared" / "evolution-api"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for sub in ("payloads", "recorded-v2.3.6") for p in (root / sub).rglob("*")
            if p.is_file()}


def test_vendored_facts_match_shared() -> None:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is not beside this checkout")
    assert _files(FACTS) == _files(SHARED), (
        "tests/fixtures/evolution-api differs from shared/evolution-api: copy it again")
