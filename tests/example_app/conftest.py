"""The example app's package ``generated`` lives at the repository root: make it importable
(in your own project, ``pythonpath = ["."]`` under ``[tool.pytest.ini_options]`` does this)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
