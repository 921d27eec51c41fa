"""Motor's own integration tests (asyncio), run against the embedded server.

Motor (the asyncio driver on PyPI, ``motor``) ships its test tree in its sdist. The modules
listed in :data:`SUITE_MODULES` exercise CRUD, cursors, aggregation, change streams,
sessions and transactions, and the manual's documentation examples, through a client that
is not the one the runtime uses. This test starts the embedded server as a real process
(in memory, ``--enable-test-commands`` for the fail points the suite sets), runs those
modules in a pytest subprocess against it (Motor's harness reads ``DB_IP``/``DB_PORT``),
and compares the outcome with ``motor_expected.json``:

* every id in ``expected_to_pass`` must pass (a regression fails this test);
* every id in ``known_failures`` has the reason it cannot pass here (e.g. it needs
  ``pymongocrypt`` and a ``crypt_shared`` library, a secondary member, or a server on
  ``localhost:27017``); those are reported, never silently skipped;
* a test that passes but is listed nowhere is reported so it can be locked in.

``REACTGEN_REFRESH_SPEC=1`` rewrites ``expected_to_pass`` with what passes now (the
``known_failures`` reasons are kept). The pass rate is recorded in ``docs/spec-tests.md``.
The sdist is downloaded once into ``.cache/pymongo-sdist/``; without network access and
without a cached tarball the test is skipped.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pymongo_sdist import (
    SdistUnavailable,
    ensure_test_tree,
    failure_cause,
    format_summary,
    run_suite,
)
from support import ServerFactory

EXPECTED_FILE = Path(__file__).with_name("motor_expected.json")
REFRESH_ENV = "REACTGEN_REFRESH_SPEC"
SUITE_MODULES = [
    "asyncio_tests/test_asyncio_basic.py",
    "asyncio_tests/test_asyncio_client.py",
    "asyncio_tests/test_asyncio_collection.py",
    "asyncio_tests/test_asyncio_cursor.py",
    "asyncio_tests/test_asyncio_database.py",
    "asyncio_tests/test_asyncio_change_stream.py",
    "asyncio_tests/test_asyncio_session.py",
    "asyncio_tests/test_asyncio_await.py",
    "asyncio_tests/test_examples.py",
]


#: Motor's harness probes the server with 100 ms connect and server-selection timeouts
#: (first with TLS, then without); on a loaded 2-core CI machine that probe can miss, and
#: then every module fails to collect. The one change made to the third-party tree.
_PROBE_TIMEOUTS = {"connectTimeoutMS = 100\n": "connectTimeoutMS = 5000\n",
                   "serverSelectionTimeoutMS = 100\n": "serverSelectionTimeoutMS = 5000\n"}


def _patch_probe_timeouts(tree: Path) -> None:
    path = tree / "test" / "test_environment.py"
    text = original = path.read_text(encoding="utf-8")
    for old, new in _PROBE_TIMEOUTS.items():
        text = text.replace(old, new)
    if text != original:
        path.write_text(text, encoding="utf-8")


def _load_expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    return data


def _refresh(data: dict[str, Any], passed: set[str], total: int, version: str) -> None:
    data["motor"] = version
    data["counts_at_refresh"] = {"total": total, "passed": len(passed)}
    data["expected_to_pass"] = sorted(passed)
    EXPECTED_FILE.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@pytest.mark.timeout(1800)
def test_motor_integration_suite(tmp_path: Path, fresh_server: ServerFactory) -> None:
    """Motor's asyncio integration tests pass against the server, except the listed ones."""
    if importlib.util.find_spec("motor") is None or importlib.util.find_spec("mockupdb") is None:
        pytest.fail("motor and mockupdb are dev dependencies: run `python3 dev.py test`")
    version = importlib.metadata.version("motor")
    try:
        tree = ensure_test_tree(version, package="motor")
    except SdistUnavailable as exc:
        pytest.skip(f"Motor {version} sdist unavailable: {exc}")
    _patch_probe_timeouts(tree)

    server_log = tmp_path / "embedded-server.log"
    junit = tmp_path / "motor-junit.xml"
    server = fresh_server(in_memory=True, enable_test_commands=True, log_path=server_log)
    try:
        run = run_suite(
            SUITE_MODULES, "127.0.0.1", server.port, junit, select=None, tree=tree,
            extra_args=["-W", "ignore::DeprecationWarning"],
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Motor's suite did not finish within {exc.timeout}s; log: {server_log}")
    alive = server.running
    server.stop()

    data = _load_expected()
    expected: list[str] = list(data.get("expected_to_pass", []))
    known: dict[str, str] = dict(data.get("known_failures", {}))
    summary = format_summary(run.results, expected, title=f"Motor {version} integration tests")
    print(f"\n{summary}\n\nJUnit report: {junit}\nserver log: {server_log}")
    assert run.results, f"no test results in {junit}:\n{run.output[-4000:]}"
    assert alive, f"the embedded server died during the run; log: {server_log}"

    passed = set(run.ids("passed"))
    if os.environ.get(REFRESH_ENV) == "1":
        _refresh(data, passed, len(run.results), version)
        print(f"\nrewrote {EXPECTED_FILE.name}: {len(passed)} expected to pass")
        return
    for test_id, reason in sorted(known.items()):
        print(f"known failure {test_id}: {reason}")
    unlisted = sorted(
        t for t, r in run.results.items()
        if r.outcome in ("failed", "error") and t not in known and t not in expected
    )
    newly_passing = sorted(passed - set(expected))
    if newly_passing:
        print(f"\n{len(newly_passing)} tests pass that {EXPECTED_FILE.name} does not list yet:")
        for test_id in newly_passing:
            print(f"  {test_id}")
    regressions = [t for t in expected if t not in passed]
    problems = [
        f"  {t}: {run.results[t].outcome if t in run.results else 'not reported'}: "
        f"{failure_cause(run.results[t]) if t in run.results else ''}"
        for t in regressions
    ] + [f"  {t} (not listed): {failure_cause(run.results[t])}" for t in unlisted]
    if problems:
        pytest.fail(
            f"{len(problems)} Motor tests failed that {EXPECTED_FILE.name} expects to pass "
            "or does not explain:\n" + "\n".join(problems),
            pytrace=False,
        )
