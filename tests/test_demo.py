"""The README's main job (``python3 dev.py start`` runs ``python -m runtime.demo``) works end to
end on the embedded server and ends by pointing at the dashboard and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_main_job_runs_end_to_end_and_points_at_the_tools() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    result = subprocess.run([sys.executable, "-m", "runtime.demo", "--timeout", "60"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "The example works end to end." in out
    assert "python3 dev.py start --keep" in out
    assert "runtime reactors --mongodb-uri mongodb://" in out
    # Issue 11: the burst of reviews explains why it shows one run per review.
    assert "debounce is per document" in out
