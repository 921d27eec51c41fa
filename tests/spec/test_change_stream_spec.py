"""The change-streams unified specification tests, run against the embedded server.

PyMongo's sdist ships the spec's JSON tests (``test/change_streams/unified/``, 9 files,
89 tests) and the runner for them (``test/test_change_stream.py``, the ``Unified``
classes). This test starts the embedded server as a real process (in memory, with
``--enable-test-commands`` so the fail-point tests can run), runs that suite against
it in a pytest subprocess, and compares the outcome with
``change_stream_expected.json``: every test id listed there must pass, so a
regression fails this test. Tests that pass but are not listed yet are reported, not
failed. See ``docs/spec-tests.md``.

* ``REACTGEN_REFRESH_SPEC=1`` rewrites the expectation file with the tests that pass
  now (and prints what changed) instead of asserting.
* When ``MONGODB_URI`` is set the test is skipped (it uses ``fresh_server``, so
  ``conftest.py`` marks it ``embedded_only``): the expectations describe the embedded
  server, and PyMongo's harness only takes a host and port (no credentials or TLS).
  To run the suite against another server, e.g. a real ``mongod`` replica set, use
  ``python tests/spec/pymongo_sdist.py --host H --port P``.
* The sdist is downloaded once into ``.cache/pymongo-sdist/``; without network access
  and without a cached tarball the test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pymongo_sdist import (
    SdistUnavailable,
    SuiteRun,
    ensure_test_tree,
    failure_cause,
    format_summary,
    installed_pymongo_version,
    run_suite,
)
from support import ServerFactory

EXPECTED_FILE = Path(__file__).with_name("change_stream_expected.json")
REFRESH_ENV = "REACTGEN_REFRESH_SPEC"
SUITE_MODULE = "test_change_stream.py"
SUITE_SELECT = "Unified"
#: Skip message of PyMongo's harness when it cannot reach the server at all.
_NO_SERVER = "Cannot connect to MongoDB"


def _load_expected() -> dict[str, Any]:
    if not EXPECTED_FILE.is_file():
        return {"pymongo": None, "expected_to_pass": []}
    data: dict[str, Any] = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    return data


def _write_expected(run: SuiteRun, version: str) -> None:
    counts = run.counts()
    data = {
        "_comment": (
            "Test ids of PyMongo's change-streams unified spec tests that must pass against "
            "the embedded server (tests/spec/test_change_stream_spec.py). Regenerate with "
            f"{REFRESH_ENV}=1; see docs/spec-tests.md."
        ),
        "pymongo": version,
        "suite": f"test/{SUITE_MODULE} -k {SUITE_SELECT}",
        "counts_at_refresh": {
            "total": len(run.results),
            "passed": counts["passed"],
            "failed": counts["failed"] + counts["error"],
            "skipped": counts["skipped"],
        },
        "expected_to_pass": run.ids("passed"),
    }
    EXPECTED_FILE.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@pytest.mark.timeout(1800)
def test_change_stream_unified_spec(tmp_path: Path, fresh_server: ServerFactory) -> None:
    version = installed_pymongo_version()
    try:
        tree = ensure_test_tree(version)
    except SdistUnavailable as exc:
        pytest.skip(f"PyMongo {version} sdist unavailable: {exc}")

    server_log = tmp_path / "embedded-server.log"
    junit = tmp_path / "change-stream-junit.xml"
    server = fresh_server(in_memory=True, enable_test_commands=True, log_path=server_log)
    try:
        run = run_suite(
            SUITE_MODULE, "127.0.0.1", server.port, junit, select=SUITE_SELECT, tree=tree
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the spec suite did not finish within {exc.timeout}s; log: {server_log}")
    alive = server.running
    server.stop()

    expected_data = _load_expected()
    expected: list[str] = list(expected_data.get("expected_to_pass", []))
    summary = format_summary(
        run.results, expected, title=f"change-streams unified spec (pymongo {version})"
    )
    print(f"\n{summary}\n\nJUnit report: {junit}\nserver log: {server_log}")

    assert run.results, f"no test results in {junit}:\n{run.output[-4000:]}"
    unreachable = [r for r in run.results.values() if _NO_SERVER in r.message]
    assert not unreachable, (
        f"PyMongo's harness could not use the server ({unreachable[0].message}); "
        f"server log: {server_log}\n{run.output[-4000:]}"
    )
    assert alive, f"the embedded server died during the run; log: {server_log}"

    passed = set(run.ids("passed"))
    if os.environ.get(REFRESH_ENV) == "1":
        _write_expected(run, version)
        gained = sorted(passed - set(expected))
        lost = sorted(set(expected) - passed)
        print(f"\nrewrote {EXPECTED_FILE.name}: {len(passed)} expected to pass")
        for test_id in gained:
            print(f"  + {test_id}")
        for test_id in lost:
            print(f"  - {test_id}")
        return

    if expected_data.get("pymongo") not in (None, version):
        print(
            f"\nnote: {EXPECTED_FILE.name} was written with pymongo "
            f"{expected_data.get('pymongo')}, this is {version}"
        )
    newly_passing = sorted(passed - set(expected))
    if newly_passing:
        print(
            f"\n{len(newly_passing)} tests pass that {EXPECTED_FILE.name} does not list yet "
            f"(lock them in with {REFRESH_ENV}=1):"
        )
        for test_id in newly_passing:
            print(f"  {test_id}")

    regressions = [t for t in expected if t not in passed]
    if regressions:
        lines = []
        for test_id in regressions:
            result = run.results.get(test_id)
            if result is None:
                lines.append(f"  {test_id}: not reported")
            else:
                lines.append(f"  {test_id}: {result.outcome}: {failure_cause(result)}")
        pytest.fail(
            f"{len(regressions)} change-stream spec tests listed in {EXPECTED_FILE.name} "
            "did not pass:\n" + "\n".join(lines),
            pytrace=False,
        )
