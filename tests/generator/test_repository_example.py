"""The committed example application: ``generated/`` is exactly what ``schemas/`` builds to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_is_up_to_date_with_schemas() -> None:
    result = subprocess.run([sys.executable, "-m", "generator", "check", "schemas/"],
                            cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, f"run `reactgen build schemas/`:\n{result.stderr}"
