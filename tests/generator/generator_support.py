"""Helpers for the generator tests (import as ``from generator_support import ...``)."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from generator.cli import main

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
GOLDEN = Path(__file__).resolve().parent / "golden"


@dataclass
class CliResult:
    """Exit code and output of one ``reactgen`` invocation."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def reactgen(cwd: Path, *args: str) -> CliResult:
    """Run ``reactgen ARGS`` in-process with ``cwd`` as the project directory."""
    out, err = io.StringIO(), io.StringIO()
    with _cwd(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def reactgen_process(cwd: Path, *args: str, env: dict[str, str] | None = None) -> CliResult:
    """Run ``python -m generator ARGS`` as a subprocess (the real command line)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "generator", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative POSIX path -> bytes); empty if it does not exist."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_files(root: Path, files: dict[str, str]) -> None:
    """Create ``files`` (relative path -> text) below ``root``."""
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def tool_env() -> dict[str, str]:
    """Environment for mypy/ruff subprocesses: ``runtime`` importable from the repository."""
    env = dict(os.environ)
    env["MYPYPATH"] = str(REPO)
    env["PYTHONPATH"] = str(REPO)
    return env


_MTIME_BUMPS = itertools.count(1)


def run_mypy(project: Path, *targets: str, cache_dir: Path | None = None) -> CliResult:
    """``mypy --strict TARGETS`` in ``project`` (the generated package's parent folder)."""
    args = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
            "--show-error-codes", "--no-color-output"]
    if cache_dir is not None:
        args += ["--cache-dir", str(cache_dir)]
        # mypy trusts a cached file when size and whole-second mtime match; tests rewrite
        # files within one second, so give the project's sources a fresh mtime and let mypy
        # fall back to comparing content hashes.
        stamp = time.time() + next(_MTIME_BUMPS)
        for source in project.rglob("*.py"):
            os.utime(source, (stamp, stamp))
    proc = subprocess.run([*args, *targets], cwd=project, env=tool_env(), capture_output=True,
                          text=True, timeout=600, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def run_ruff(project: Path, *targets: str) -> CliResult:
    """``ruff check`` with the repository's configuration, treating both the generated package
    and ``runtime`` as first-party (as they are in a real project)."""
    ruff = Path(sys.executable).parent / "ruff"
    args = [str(ruff) if ruff.exists() else "ruff", "check", "--no-cache",
            "--config", str(REPO / "pyproject.toml"),
            "--config", f"src = [{str(project)!r}, {str(REPO)!r}]", *targets]
    proc = subprocess.run(args, cwd=project, env=tool_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
