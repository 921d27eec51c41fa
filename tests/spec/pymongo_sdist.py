"""Run the specification tests that ship in PyMongo's source distribution.

PyMongo's sdist contains its test tree (``test/``), including the runner for the
MongoDB *unified test format* (``test/unified_format.py``) and the JSON test files of
several specifications. This module

* fetches the sdist of the *installed* PyMongo version with ``pip download`` into
  ``.cache/pymongo-sdist/`` (once; the tarball is reused afterwards, so dropping the
  tarball there by hand also works offline),
* extracts only its ``test/`` tree, so that the tests import the installed ``pymongo``
  rather than the source copy in the sdist,
* runs one of its test modules with ``python -m pytest`` in a subprocess against a
  server given as host and port (PyMongo's harness reads ``DB_IP``/``DB_PORT``; it
  does not take a URI), with a JUnit XML report, and
* parses that report into one outcome per test id.

The sdist's own pytest configuration (in its ``pyproject.toml``) is not used: it adds
``--strict-config``, ``-m "default or default_async"``, a fixed ``--junitxml`` path and
``filterwarnings = error``. Instead a small ``pytest.ini`` is written next to the
extracted tests; it only registers the two markers that the sdist's ``conftest.py``
attaches. Warnings therefore stay warnings: this suite checks the server, not the
driver's warning hygiene. The sync test modules need nothing beyond ``pytest`` and
``pymongo``; ``pytest-timeout`` is used for a per-test time limit when installed.

It can also be used by hand, e.g. against a real ``mongod`` to check the harness::

    python tests/spec/pymongo_sdist.py --host 127.0.0.1 --port 27017
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "CACHE_DIR",
    "Outcome",
    "SdistUnavailable",
    "SuiteRun",
    "TestResult",
    "ensure_test_tree",
    "failure_cause",
    "format_summary",
    "installed_pymongo_version",
    "parse_junit",
    "run_suite",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
#: Where the sdist tarball and the extracted test trees are kept (gitignored).
CACHE_DIR: Final = REPO_ROOT / ".cache" / "pymongo-sdist"

#: Environment variables read by PyMongo's test harness (``test/helpers_shared.py``)
#: that would change what it connects to or how. They are removed from the child's
#: environment, and ``DB_IP``/``DB_PORT`` are set explicitly.
_HARNESS_ENV: Final = (
    "DB_IP",
    "DB_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "CLIENT_PEM",
    "CA_PEM",
    "COMPRESSORS",
    "MONGODB_API_VERSION",
    "MONGODB_URI",
    "TEST_LOAD_BALANCER",
    "SINGLE_MONGOS_LB_URI",
    "MULTI_MONGOS_LB_URI",
    "REQUIRE_FIPS",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_CURRENT_TEST",
)

_PYTEST_INI: Final = textwrap.dedent(
    """\
    # Written by reactgen tests/spec/pymongo_sdist.py; replaces the sdist's own pytest
    # configuration (no --strict-config, no -m filter, no filterwarnings=error).
    [pytest]
    markers =
        default: default test suite
        default_async: default async test suite
    """
)

Outcome = Literal["passed", "failed", "error", "skipped"]
_RANK: Final[Mapping[str, int]] = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


class SdistUnavailable(RuntimeError):
    """The PyMongo sdist could not be obtained (no network and no cached tarball)."""


@dataclass(frozen=True)
class TestResult:
    """Outcome of one test, as reported in the JUnit XML.

    ``test_id`` is ``<TestClass>::<test_method>`` (the module is left out, since one run
    covers one module). ``message`` is the failure/error/skip message, ``details`` the
    text of the report element (traceback), both empty for a passed test.
    """

    __test__ = False  # not a pytest test class

    test_id: str
    outcome: Outcome
    message: str = ""
    details: str = ""
    seconds: float = 0.0

    @property
    def group(self) -> str:
        """The test class, i.e. one spec JSON file for the unified suites."""
        return self.test_id.split("::", 1)[0]


@dataclass
class SuiteRun:
    """Result of one :func:`run_suite` call."""

    results: dict[str, TestResult]
    returncode: int
    junit_path: Path
    command: list[str]
    output: str = field(repr=False, default="")

    def ids(self, outcome: Outcome) -> list[str]:
        """Sorted ids of the tests with ``outcome``."""
        return sorted(t for t, r in self.results.items() if r.outcome == outcome)

    def counts(self) -> Counter[str]:
        """Number of tests per outcome."""
        return Counter(r.outcome for r in self.results.values())


def installed_pymongo_version() -> str:
    """Version of the ``pymongo`` distribution installed in this interpreter."""
    return importlib.metadata.version("pymongo")


def _download_sdist(version: str, cache_dir: Path, timeout: float,
                    package: str = "pymongo") -> Path:
    """Return the sdist tarball of ``package==version``, downloading it if needed."""
    tarball = cache_dir / f"{package}-{version}.tar.gz"
    if tarball.is_file():
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"{package}=={version}",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--disable-pip-version-check",
        "--dest",
        str(cache_dir),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SdistUnavailable(f"pip download timed out after {timeout:g}s") from exc
    if proc.returncode != 0 or not tarball.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SdistUnavailable(
            f"could not download the {package} {version} sdist into {cache_dir} "
            f"(put {package}-{version}.tar.gz there to work offline):\n{tail}"
        )
    return tarball


def ensure_test_tree(
    version: str | None = None,
    cache_dir: Path = CACHE_DIR,
    download_timeout: float = 600,
    package: str = "pymongo",
) -> Path:
    """Return a directory that holds the sdist's ``test/`` tree and a ``pytest.ini``.

    ``package`` is the distribution whose sdist is used (``pymongo`` by default; the
    same works for other drivers that ship their tests, e.g. ``motor``). The directory
    (``<cache_dir>/<package>-<version>-tests``) is created on first use;
    extraction goes to a temporary directory that is renamed into place, so concurrent
    callers never see a half-extracted tree.

    Raises:
        SdistUnavailable: if the tarball is not cached and cannot be downloaded, or
            does not contain ``test/``.
    """
    version = version or importlib.metadata.version(package)
    root = cache_dir / f"{package}-{version}-tests"
    if (root / "test" / "__init__.py").is_file() and (root / "pytest.ini").is_file():
        return root
    tarball = _download_sdist(version, cache_dir, download_timeout, package)
    staging = Path(tempfile.mkdtemp(prefix=f".{package}-{version}-", dir=cache_dir))
    try:
        prefix = f"{package}-{version}/test/"
        with tarfile.open(tarball, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise SdistUnavailable(f"{tarball} has no {prefix} directory")
            archive.extractall(staging, members=members, filter="data")
        extracted = staging / f"{package}-{version}"
        (extracted / "pytest.ini").write_text(_PYTEST_INI, encoding="utf-8")
        try:
            extracted.rename(root)
        except OSError:
            if not (root / "test" / "__init__.py").is_file():
                raise
            # Another process won the race; its tree is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _child_env(host: str, port: int, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _HARNESS_ENV}
    env["DB_IP"] = host
    env["DB_PORT"] = str(port)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def run_suite(
    module: str | Sequence[str],
    host: str,
    port: int,
    junit_path: Path,
    *,
    select: str | None = "Unified",
    tree: Path | None = None,
    per_test_timeout: float | None = 30,
    timeout: float = 1800,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> SuiteRun:
    """Run ``test/<module>`` of the sdist against ``host:port`` and parse the results.

    Args:
        module: File name in the sdist's ``test/`` directory, e.g. ``test_change_stream.py``
            (or several, e.g. ``["asyncio_tests/test_asyncio_collection.py", ...]``).
        host, port: The server under test (``DB_IP``/``DB_PORT``).
        junit_path: Where pytest writes its JUnit XML report.
        select: ``-k`` expression (default ``Unified``: only the unified-format tests).
        tree: Result of :func:`ensure_test_tree` (fetched if ``None``).
        per_test_timeout: Per-test limit in seconds via pytest-timeout, if installed.
        timeout: Limit for the whole run; the child is killed when it is exceeded.
        extra_args: Further pytest arguments.
        env: Further environment variables for the child.

    Raises:
        subprocess.TimeoutExpired: if the run exceeds ``timeout``.
        RuntimeError: if pytest produced no JUnit report (e.g. a collection error).
    """
    tree = tree or ensure_test_tree()
    junit_path.parent.mkdir(parents=True, exist_ok=True)
    junit_path.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(tree / "pytest.ini"),
        "--rootdir",
        str(tree),
        *[f"test/{m}" for m in ([module] if isinstance(module, str) else module)],
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfEs",
        "--tb=short",
        f"--junitxml={junit_path}",
    ]
    if select:
        argv += ["-k", select]
    if per_test_timeout and importlib.util.find_spec("pytest_timeout") is not None:
        argv += ["-o", f"timeout={per_test_timeout:g}"]
    argv += list(extra_args)
    # The child's cwd is the extracted tree: PyMongo's harness puts "" (the cwd) on
    # sys.path to import its ``test`` package, and that tree holds no ``pymongo``
    # package, so the installed one is used.
    proc = subprocess.run(
        argv,
        cwd=tree,
        env=_child_env(host, port, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if not junit_path.is_file():
        raise RuntimeError(
            f"pytest exited with {proc.returncode} and wrote no JUnit report\n"
            f"command: {' '.join(argv)}\n{output[-4000:]}"
        )
    return SuiteRun(parse_junit(junit_path), proc.returncode, junit_path, argv, output)


def parse_junit(path: Path) -> dict[str, TestResult]:
    """Parse a pytest JUnit XML report into ``{test_id: TestResult}``.

    The id is ``<class>::<name>`` with the module part of ``classname`` dropped. A test
    that appears more than once (e.g. a teardown error reported separately) keeps its
    worst outcome (error > failed > skipped > passed). Expected failures count as
    skipped.
    """
    results: dict[str, TestResult] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname = case.get("classname", "")
        test_id = f"{classname.rsplit('.', 1)[-1]}::{case.get('name', '')}"
        outcome: Outcome = "passed"
        message = details = ""
        for child in case:
            kind: Outcome | None = {
                "failure": "failed",
                "error": "error",
                "skipped": "skipped",
            }.get(child.tag)  # type: ignore[assignment]
            if kind is None or _RANK[kind] < _RANK[outcome]:
                continue
            outcome = kind
            message = child.get("message", "") or ""
            details = child.text or ""
        seconds = float(case.get("time", "0") or 0)
        previous = results.get(test_id)
        if previous is not None and _RANK[previous.outcome] >= _RANK[outcome]:
            continue
        results[test_id] = TestResult(test_id, outcome, message, details, seconds)
    return results


def _first_line(text: str, limit: int = 240) -> str:
    line = " ".join(text.strip().split("\n", 1)[0].split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


_SETUP_PREFIX: Final = re.compile(r'^failed on (setup|teardown) with "(.*)"$', re.S)
_VOLATILE: Final = (
    (re.compile(r"Timestamp\(\d+, \d+\)"), "Timestamp(…)"),
    (re.compile(r"ObjectId\('[0-9a-f]{24}'\)"), "ObjectId(…)"),
    (re.compile(r"\b[0-9A-Fa-f]{20,}\b"), "<hex>"),
)


def failure_cause(result: TestResult, limit: int = 300) -> str:
    """A short, run-independent description of why ``result`` failed.

    The error's first line without PyMongo's ``full error: {...}`` suffix, with
    timestamps, ObjectIds and resume tokens masked, so equal causes group together.
    """
    text = _first_line(result.message or result.details, limit=10_000)
    match = _SETUP_PREFIX.match(text)
    if match:
        text = f"(in {match.group(1)}) {match.group(2)}"
    text = text.split(", full error:", 1)[0]
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_summary(
    results: Mapping[str, TestResult],
    expected: Iterable[str] = (),
    *,
    title: str = "spec tests",
) -> str:
    """A plain-text report: totals, a per-class table, failures grouped by cause,
    skip reasons and unmet expectations. Tests listed in ``expected`` that did not
    pass are marked ``[EXPECTED TO PASS]``."""
    expected_set = set(expected)
    counts = Counter(r.outcome for r in results.values())
    lines = [
        f"{title}: {len(results)} tests; passed {counts['passed']}, "
        f"failed {counts['failed']}, error {counts['error']}, skipped {counts['skipped']}",
        "",
        f"{'class':58} {'pass':>5} {'fail':>5} {'err':>5} {'skip':>5}",
    ]
    per_group: dict[str, Counter[str]] = {}
    for result in results.values():
        per_group.setdefault(result.group, Counter())[result.outcome] += 1
    for group in sorted(per_group):
        c = per_group[group]
        lines.append(
            f"{group:58} {c['passed']:>5} {c['failed']:>5} {c['error']:>5} {c['skipped']:>5}"
        )
    by_cause: dict[str, list[TestResult]] = {}
    for r in sorted(results.values(), key=lambda r: r.test_id):
        if r.outcome in ("failed", "error"):
            by_cause.setdefault(failure_cause(r), []).append(r)
    if by_cause:
        lines += ["", "failures and errors, grouped by cause:"]
        for cause, group_results in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  [{len(group_results)}] {cause}")
            for r in group_results:
                mark = " [EXPECTED TO PASS]" if r.test_id in expected_set else ""
                lines.append(f"        {r.outcome:6} {r.test_id}{mark}")
    skip_reasons = Counter(
        _first_line(r.message, 120) for r in results.values() if r.outcome == "skipped"
    )
    if skip_reasons:
        lines += ["", "skip reasons:"]
        lines += [f"  {n:3} x {reason}" for reason, n in skip_reasons.most_common()]
    missing = sorted(expected_set - results.keys())
    if missing:
        lines += ["", "expected to pass but not reported at all:"]
        lines += [f"  {t}" for t in missing]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a suite against an already running server and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--module", default="test_change_stream.py")
    parser.add_argument("-k", dest="select", default="Unified")
    parser.add_argument("--junit", type=Path, default=CACHE_DIR / "results" / "junit.xml")
    args = parser.parse_args(argv)
    run = run_suite(args.module, args.host, args.port, args.junit, select=args.select)
    print(format_summary(run.results, title=f"{args.module} against {args.host}:{args.port}"))
    print(f"\nJUnit report: {run.junit_path}")
    return 0 if not (run.counts()["failed"] or run.counts()["error"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
