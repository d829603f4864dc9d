"""gateway/ type-checks clean under mypy, with pyproject.toml's [tool.mypy] settings (py.typed
ships: what we export must say the truth about its types)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gateway_is_clean_under_mypy(tmp_path):
    # A cache of its own per run: a stale one has reported errors already fixed.
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout, out.stdout[-2000:]
