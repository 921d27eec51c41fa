"""Fixtures of the generator tests.

Golden files: ``tests/generator/golden/<case>/`` holds what ``reactgen build`` produces for
``tests/generator/corpus/<case>/``. After an intended change of the generated code, refresh them
with ``REACTGEN_REFRESH_GOLDEN=1 pytest tests/generator`` (or ``pytest tests/generator
--refresh-golden``) and review the diff.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The ``pytest`` script (unlike ``python -m pytest``) does not put the repository on sys.path,
# and conftest imports put tests/ there, where this folder would be found as a namespace package
# ``generator`` before the editable install's finder is asked: put the real one within reach.
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

REFRESH_ENV = "REACTGEN_REFRESH_GOLDEN"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--refresh-golden", action="store_true", default=False,
                     help="rewrite tests/generator/golden/ from the current generator output")


@pytest.fixture(scope="session")
def refresh_golden(pytestconfig: pytest.Config) -> bool:
    """Whether golden files are rewritten instead of compared."""
    option = bool(pytestconfig.getoption("--refresh-golden", default=False))
    return option or os.environ.get(REFRESH_ENV, "") not in ("", "0")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache shared by the tests of one session (generation is the slow part)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the session, so only the first mypy run is cold."""
    return tmp_path_factory.mktemp("mypy-cache")
