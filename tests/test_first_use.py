"""What a new user trips over (issue 17): messages, help and skip reasons that say what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_skip_reason_for_missing_shared_names_edgetl_shared(tmp_path):
    """Tests that need ../shared skip with a reason that says how to point them at a copy elsewhere."""
    env = dict(os.environ, EDGETL_SHARED=str(tmp_path / "nowhere"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        str(ROOT / "tests" / "test_runtime.py"), "-k", "reference or shared or ptq"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    skips = [ln for ln in r.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert skips, r.stdout[-2000:]
    assert all("EDGETL_SHARED" in ln for ln in skips if "shared" in ln), skips
