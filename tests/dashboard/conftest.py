"""Fixtures of the dashboard tests: those of ``tests/runtime`` (``make_app``,
``start_runtime``), reused, plus ``start_dashboard`` and a headless Chromium ``browser``.

Test folders have no ``__init__.py``, so pytest imports every ``conftest.py`` under the module
name ``conftest``, and the helpers of ``tests/runtime`` import their types with ``from conftest
import ...``: this module therefore loads ``tests/runtime/conftest.py`` under a name of its own
and re-exports its fixtures and types (as ``tests/management/conftest.py`` does).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RUNTIME_TESTS = Path(__file__).resolve().parents[1] / "runtime"
HERE = Path(__file__).resolve().parent
for folder in (RUNTIME_TESTS, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

_NAME = "runtime_tests_conftest"
_runtime_conftest = sys.modules.get(_NAME)
if _runtime_conftest is None:
    _spec = importlib.util.spec_from_file_location(_NAME, RUNTIME_TESTS / "conftest.py")
    assert _spec is not None and _spec.loader is not None
    _runtime_conftest = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _runtime_conftest
    _spec.loader.exec_module(_runtime_conftest)

from dashboard_support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    DashboardFactory,
    DashboardProcess,
)
from pymongo.database import Database  # noqa: E402
from runtime_harness import App  # noqa: E402

AppBuilder = _runtime_conftest.AppBuilder
RuntimeFactory = _runtime_conftest.RuntimeFactory
make_app = _runtime_conftest.make_app
start_runtime = _runtime_conftest.start_runtime


@pytest.fixture
def start_dashboard(mongodb_uri: str,
                    db: Database[dict[str, Any]]) -> Iterator[DashboardFactory]:
    """``start_dashboard(app, token="...", args=[...], env={...})`` runs ``runtime
    dashboard`` on the test's database (port 0) and waits for its URL; every process is
    stopped (and must exit 0) after the test."""
    processes: list[DashboardProcess] = []

    def start(app: App, token: str | None = None, args: list[str] | None = None,
              env: dict[str, str] | None = None, wait: bool = True) -> DashboardProcess:
        process = DashboardProcess(app, mongodb_uri, db.name, token, list(args or []),
                                   dict(env or {}), name=f"d{len(processes) + 1}")
        processes.append(process)
        process.start()
        if wait:
            process.wait_started()
        return process

    try:
        yield start
    finally:
        failures = []
        for process in processes:
            status = process.stop()
            if status != 0:
                failures.append(f"{process.name} exited {status}:\n{process.log()[-3000:]}")
        assert not failures, "\n".join(failures)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium context (Playwright, a fresh profile); skipped only when
    ``/usr/bin/chromium`` is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: the browser tests need Debian's chromium")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1440, "height": 900})
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()
    finally:
        playwright.stop()


__all__ = ["AppBuilder", "DashboardFactory", "RuntimeFactory", "browser", "make_app",
           "start_dashboard", "start_runtime"]
