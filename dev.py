#!/usr/bin/env python3
"""Developer entry point for reactgen (standard library only).

    python3 dev.py start [ARGS...]   set up .venv, then run the main job
    python3 dev.py test  [ARGS...]   set up .venv, then pytest (ARGS passed on), ruff, mypy

Set-up creates ``.venv`` if it is missing and runs
``pip install -e '.[dev]' --config-settings editable_mode=compat`` into it. The install is
skipped while ``pyproject.toml`` and that command are unchanged since the last successful
install (their hash is kept in ``.venv/.reactgen-installed``).

``editable_mode=compat`` puts the repository on ``sys.path`` with a plain ``.pth`` line, which
type checkers follow: ``mypy --strict`` on an application's own package then finds the types of
``runtime`` and ``generator`` (setuptools' default editable install uses an import hook that
mypy cannot see).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYPROJECT = ROOT / "pyproject.toml"
MARKER = VENV / ".reactgen-installed"
MIN_PYTHON = (3, 11)


def main_job(python: Path, args: Sequence[str]) -> list[str]:
    """The command that ``dev.py start`` runs (change it here when the main job changes)."""
    return [str(python), "-m", "runtime.demo", *args]


# --------------------------------------------------------------------------- output


def header(text: str) -> None:
    """Print a step header."""
    print(f"\n==> {text}", flush=True)


def fail(text: str) -> int:
    """Print an error and return exit status 1."""
    print(f"dev.py: error: {text}", file=sys.stderr, flush=True)
    return 1


# --------------------------------------------------------------------------- set-up


def venv_python() -> Path:
    """Path of the interpreter inside ``.venv``."""
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def child_env() -> dict[str, str]:
    """Environment for commands run inside the virtual environment."""
    env = dict(os.environ)
    bindir = venv_python().parent
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    return env


def run(argv: Sequence[str]) -> int:
    """Run a command from the repository root and return its exit status."""
    print("$ " + " ".join(argv), flush=True)
    try:
        return subprocess.run(list(argv), cwd=ROOT, env=child_env(), check=False).returncode
    except FileNotFoundError as exc:
        print(f"dev.py: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127


def venv_is_usable() -> bool:
    """Whether ``.venv`` has a working interpreter of a supported version."""
    python = venv_python()
    if not python.exists():
        return False
    check = f"import sys; sys.exit(0 if sys.version_info >= {MIN_PYTHON!r} else 1)"
    try:
        result = subprocess.run([str(python), "-c", check], capture_output=True, check=False)
    except OSError:
        return False
    return result.returncode == 0


def create_venv() -> int:
    """Create (or re-create) ``.venv`` with pip."""
    header(f"creating virtual environment {VENV.relative_to(ROOT)}")
    try:
        venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    except (OSError, subprocess.CalledProcessError) as exc:
        hint = ""
        if sys.platform.startswith("linux"):
            hint = " (on Debian/Ubuntu: apt-get install python3-venv)"
        return fail(f"could not create {VENV}: {exc}{hint}")
    MARKER.unlink(missing_ok=True)
    return 0


def install_command() -> list[str]:
    """How the project is installed into ``.venv`` (editable; see the module docstring)."""
    return [str(venv_python()), "-m", "pip", "install", "-e", ".[dev]",
            "--config-settings", "editable_mode=compat"]


def pyproject_hash() -> str:
    """Hash of ``pyproject.toml`` and of the install command, which decides whether to
    re-install (a changed install mode re-installs too)."""
    digest = hashlib.sha256(PYPROJECT.read_bytes())
    digest.update("\0".join(["", *install_command()[1:]]).encode())
    return digest.hexdigest()


def install() -> int:
    """:func:`install_command` unless pyproject.toml and the command are unchanged."""
    wanted = pyproject_hash()
    if MARKER.exists() and MARKER.read_text().strip() == wanted:
        header("dependencies up to date (pyproject.toml and install command unchanged)")
        return 0
    header("installing reactgen and its dev dependencies into .venv")
    status = run(install_command())
    if status != 0:
        return fail(f"pip install failed (exit status {status})")
    MARKER.write_text(wanted + "\n")
    return 0


def setup() -> int:
    """Make sure ``.venv`` exists and has the project installed."""
    if sys.version_info < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        return fail(f"Python {wanted}+ is needed, this is {sys.version.split()[0]}")
    if not PYPROJECT.exists():
        return fail(f"{PYPROJECT} not found")
    if not venv_is_usable():
        status = create_venv()
        if status != 0:
            return status
    return install()


# --------------------------------------------------------------------------- commands


def cmd_start(args: Sequence[str]) -> int:
    """``dev.py start``: set up, then run :func:`main_job`."""
    status = setup()
    if status != 0:
        return status
    header("running the main job")
    return run(main_job(venv_python(), args))


def cmd_test(args: Sequence[str]) -> int:
    """``dev.py test``: set up, then pytest, ruff and mypy; non-zero if any fails."""
    status = setup()
    if status != 0:
        return status
    python = str(venv_python())
    steps = [
        ("pytest", [python, "-m", "pytest", *args]),
        ("ruff check", [python, "-m", "ruff", "check", "."]),
        ("mypy (strict, config in pyproject.toml)", [python, "-m", "mypy"]),
    ]
    results: list[tuple[str, int]] = []
    for number, (name, argv) in enumerate(steps, start=1):
        header(f"[{number}/{len(steps)}] {name}")
        code = run(argv)
        if name == "pytest" and code == 5:
            print("dev.py: pytest collected no tests; that counts as a failure", flush=True)
        results.append((name, code))
    header("summary")
    for name, code in results:
        print(f"  {'ok  ' if code == 0 else 'FAIL'}  {name}" + (f" (exit {code})" if code else ""))
    failed = [name for name, code in results if code != 0]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", flush=True)
        return 1
    print("\nall checks passed", flush=True)
    return 0


COMMANDS = {"start": cmd_start, "test": cmd_test}


def main(argv: Sequence[str]) -> int:
    """Dispatch ``dev.py COMMAND [ARGS...]``."""
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip() if __doc__ else "usage: dev.py {start,test} [ARGS...]")
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
