"""Fixtures of the metrics tests: those of ``tests/runtime`` (``make_app``, ``start_runtime``),
reused.

Test folders have no ``__init__.py``, so pytest imports every ``conftest.py`` under the module
name ``conftest``; this module therefore loads ``tests/runtime/conftest.py`` under a name of its
own and re-exports its fixtures and types (as ``tests/management/conftest.py`` does).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

RUNTIME_TESTS = Path(__file__).resolve().parents[1] / "runtime"
if str(RUNTIME_TESTS) not in sys.path:
    sys.path.insert(0, str(RUNTIME_TESTS))

_spec = importlib.util.spec_from_file_location("runtime_tests_conftest_metrics",
                                               RUNTIME_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_runtime_conftest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _runtime_conftest
_spec.loader.exec_module(_runtime_conftest)

AppBuilder = _runtime_conftest.AppBuilder
RuntimeFactory = _runtime_conftest.RuntimeFactory
make_app = _runtime_conftest.make_app
start_runtime = _runtime_conftest.start_runtime

__all__ = ["AppBuilder", "RuntimeFactory", "make_app", "start_runtime"]
