"""The tutorial (docs/tutorial.md), walked as a new user would, outside this repository.

The steps are read from the tutorial itself, so the page cannot drift from what reactgen does.
Fenced blocks whose info string contains ``tutorial`` are steps, in page order:

- ``sh tutorial``: shell commands, run with bash (``set -e``) in the folder and environment the
  previous step left (``cd`` and ``source .venv/bin/activate`` carry over, as in a terminal);
  ``~/src/reactgen`` (the clone's path in the tutorial) is replaced by this repository.
- ``sh tutorial background``: a long-running command (``runtime serve``), started and left
  running; it is stopped with SIGINT (Ctrl-C) at the end and must exit 0.
- ``<lang> tutorial file=PATH [below-line=N]``: write the block to PATH (keeping the first N
  lines the file already has).
- ``text tutorial output``: every line must match a line of the previous command's output.
- ``text tutorial log``: every line must appear in the background command's log (polled with a
  deadline).

A line matches when each of its whitespace-separated words, except those containing ``…``
(values that vary: times, ids), is a word of the other line.

The environment is a new user's: a temporary folder outside the repository, the base Python
(not this repository's ``.venv``), no ``PYTHONPATH``, ``VIRTUAL_ENV`` or ``MONGODB_URI``. reactgen
is installed exactly as the tutorial says (``pip install <clone>``); pip's cache keeps that fast.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
README = ROOT / "README.md"
CLONE_IN_DOCS = "~/src/reactgen"
ELLIPSIS = "…"
COMMAND_TIMEOUT_S = 600.0
LOG_DEADLINE_S = 60.0
STOP_DEADLINE_S = 60.0

FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.timeout(1200)


@dataclass
class Step:
    """One marked block of the tutorial."""

    language: str
    options: dict[str, str]
    flags: set[str]
    body: str
    line: int

    @property
    def where(self) -> str:
        return f"docs/tutorial.md line {self.line}"


def tutorial_steps(text: str) -> list[Step]:
    """The blocks of ``text`` marked ``tutorial``, in order."""
    steps: list[Step] = []
    for match in FENCE.finditer(text):
        words = match.group(2).split()
        if "tutorial" not in words:
            continue
        options = dict(word.split("=", 1) for word in words if "=" in word)
        flags = {word for word in words if "=" not in word and word != "tutorial"}
        line = text.count("\n", 0, match.start()) + 1
        steps.append(Step(match.group(1), options, flags, match.group(3), line))
    return steps


def words_match(expected: str, actual: str) -> bool:
    """Whether every word of ``expected`` without ``…`` is a word of ``actual``."""
    wanted = [word for word in expected.split() if ELLIPSIS not in word]
    have = set(actual.split())
    return all(word in have for word in wanted)


def unmatched(expected: str, actual: str) -> list[str]:
    """The non-empty lines of ``expected`` that match no line of ``actual``."""
    lines = actual.splitlines()
    return [want for want in expected.splitlines()
            if want.strip() and not any(words_match(want, line) for line in lines)]


def base_python() -> str:
    """The interpreter this repository's ``.venv`` was made from (a new user's ``python3``)."""
    candidate = getattr(sys, "_base_executable", "") or sys.executable
    return str(Path(candidate).resolve())


def new_user_environment(bin_dir: Path) -> dict[str, str]:
    """``os.environ`` without this repository's venv, with ``python3`` the base Python."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MONGODB_URI",
                          "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"}
           and not key.startswith("REACTGEN_")}
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(base_python())
    path = [entry for entry in env.get("PATH", "").split(os.pathsep)
            if entry and not Path(entry).resolve().is_relative_to(ROOT)]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    return env


@dataclass
class Walk:
    """What walking the tutorial left behind."""

    home: Path
    cwd: Path
    env: dict[str, str]
    outputs: list[tuple[Step, str]] = field(default_factory=list)
    log: str = ""
    serve_status: int | None = None

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=False)


class Walker:
    """Runs the tutorial's steps one after the other, like a user in a terminal."""

    def __init__(self, home: Path) -> None:
        self.walk = Walk(home, home, new_user_environment(home / ".bin"))
        self.state = home / ".state"
        self.state.mkdir()
        self.last_output = ""
        self.background: subprocess.Popen[bytes] | None = None
        self.log_file = home / ".serve.log"
        self.stdout_file = home / ".serve.out"

    def shell(self, step: Step) -> None:
        script = step.body.replace(CLONE_IN_DOCS, shlex.quote(str(ROOT)))
        env_file, cwd_file = self.state / "env", self.state / "cwd"
        wrapped = (f"set -eo pipefail\n{script}\n"
                   f"pwd > {shlex.quote(str(cwd_file))}\n"
                   f"env -0 > {shlex.quote(str(env_file))}\n")
        started = time.monotonic()
        result = subprocess.run(["bash", "-c", wrapped], cwd=self.walk.cwd, env=self.walk.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
        output = result.stdout
        assert result.returncode == 0, (
            f"{step.where}: the commands failed (exit {result.returncode}):\n{script}\n"
            f"--- output ---\n{output[-6000:]}\n--- serve log ---\n{self.read_log()[-3000:]}")
        self.walk.cwd = Path(cwd_file.read_text().strip())
        self.walk.env = dict(entry.split("=", 1) for entry in
                             env_file.read_text().split("\0") if "=" in entry)
        self.walk.outputs.append((step, output))
        self.last_output = output
        print(f"[{time.monotonic() - started:5.1f} s] {step.where}: {script.strip()}")

    def start_background(self, step: Step) -> None:
        assert self.background is None, f"{step.where}: a background command already runs"
        command = step.body.strip()
        assert "\n" not in command, f"{step.where}: a background step is one command"
        with self.stdout_file.open("wb") as out, self.log_file.open("wb") as err:
            self.background = subprocess.Popen(["bash", "-c", f"exec {command}"],
                                               cwd=self.walk.cwd, env=self.walk.env,
                                               stdout=out, stderr=err)

    def read_log(self) -> str:
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    def wait_for_log(self, step: Step) -> None:
        deadline = time.monotonic() + LOG_DEADLINE_S
        missing = unmatched(step.body, self.read_log())
        while missing and time.monotonic() < deadline:
            if self.background is not None and self.background.poll() is not None:
                break
            time.sleep(0.1)
            missing = unmatched(step.body, self.read_log())
        assert not missing, (f"{step.where}: not in the log within {LOG_DEADLINE_S:.0f} s: "
                             f"{missing}\n--- log ---\n{self.read_log()[-6000:]}")

    def check_output(self, step: Step) -> None:
        missing = unmatched(step.body, self.last_output)
        assert not missing, (f"{step.where}: not in the previous command's output: {missing}\n"
                             f"--- output ---\n{self.last_output[-6000:]}")

    def write_file(self, step: Step) -> None:
        path = self.walk.cwd / step.options["file"]
        keep = int(step.options.get("below-line", "0"))
        head = path.read_text().splitlines(keepends=True)[:keep] if keep else []
        assert len(head) == keep, f"{step.where}: {path} has fewer than {keep} line(s)"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(head) + step.body)

    def stop_background(self) -> None:
        """Ctrl-C, then wait (with a deadline) for a clean exit."""
        process = self.background
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.walk.serve_status = process.returncode
        self.walk.log = self.read_log()

    def step(self, step: Step) -> None:
        if "file" in step.options:
            self.write_file(step)
        elif step.language == "sh" and "background" in step.flags:
            self.start_background(step)
        elif step.language == "sh":
            self.shell(step)
        elif "output" in step.flags:
            self.check_output(step)
        elif "log" in step.flags:
            self.wait_for_log(step)
        else:
            raise AssertionError(f"{step.where}: unknown kind of tutorial step {step}")


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    """The whole tutorial, walked once in a new folder outside the repository."""
    home = tmp_path_factory.mktemp("tutorial")
    assert not home.resolve().is_relative_to(ROOT)
    walker = Walker(home)
    try:
        for step in tutorial_steps(TUTORIAL.read_text()):
            walker.step(step)
    finally:
        walker.stop_background()
    yield walker.walk


def test_tutorial_steps_are_marked() -> None:
    steps = tutorial_steps(TUTORIAL.read_text())
    kinds = [(step.language, frozenset(step.flags), "file" in step.options) for step in steps]
    assert ("sh", frozenset({"background"}), False) in kinds
    assert sum(1 for step in steps if step.language == "sh") >= 6
    assert any("log" in step.flags for step in steps)
    assert any(step.options.get("file", "").startswith("tests/") for step in steps)
    # every shell block of the tutorial is a step: none is there only to be read
    plain = [match.group(0)[:60] for match in FENCE.finditer(TUTORIAL.read_text())
             if match.group(1) == "sh" and "tutorial" not in match.group(2).split()]
    assert plain == []


def test_words_match() -> None:
    assert words_match("… INFO runtime started x=…", "2026-01-01 10:00 INFO runtime started x=3")
    assert not words_match("reactors=1", "reactors=2")


def test_tutorial_runs_outside_the_repository(walk: Walk) -> None:
    """Install, new, build, mypy --strict, serve, a write, the handler fires, pytest, Ctrl-C."""
    assert walk.serve_status == 0, walk.log[-4000:]
    assert "event=runtime.stopped" in walk.log
    assert "Traceback" not in walk.log
    assert walk.cwd.parent == walk.home and (walk.cwd / "invoices_app" / "registry.py").is_file()


def test_reactgen_is_installed_in_the_projects_venv(walk: Walk) -> None:
    """The commands and packages come from the project's .venv, installed by pip, not from this
    checkout through sys.path."""
    venv = walk.cwd / ".venv"
    assert walk.env["VIRTUAL_ENV"] == str(venv)
    probe = ("import sys, runtime, generator, invoices_app.registry; "
             "print(sys.modules['runtime'].__file__); print(generator.__file__)")
    result = walk.run(["python", "-c", probe])
    assert result.returncode == 0, result.stderr
    for location in result.stdout.split():
        path = Path(location).resolve()
        assert path.is_relative_to(venv.resolve()), path
        assert "site-packages" in path.parts
    for command in ("reactgen", "runtime", "mypy"):
        where = walk.run(["bash", "-c", f"command -v {command}"]).stdout.strip()
        assert Path(where).parent == venv / "bin", (command, where)
    for package in ("runtime", "generator"):
        assert next(venv.glob(f"lib/python*/site-packages/{package}/py.typed"), None), package


def _synopsis_flags(readme: str, command: str) -> set[str]:
    """The ``--flags`` of the README's ``command [...]`` synopsis block."""
    match = re.search(rf"^{re.escape(command)} (\[.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert match, f"README has no synopsis of {command}"
    return set(re.findall(r"--[a-z][a-z-]*", match.group(1)))


@pytest.mark.parametrize("command", ["runtime serve", "runtime db"])
def test_readme_synopses_name_real_flags(walk: Walk, command: str) -> None:
    """The README's synopses of ``runtime serve`` and ``runtime db`` list flags that exist."""
    flags = _synopsis_flags(README.read_text(), command)
    assert flags
    result = walk.run([*command.split(), "--help"])
    assert result.returncode == 0, result.stderr
    documented = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    assert flags - documented == set()


def test_readme_quick_start_commands_answer_help(walk: Walk) -> None:
    """``python3 dev.py`` prints its usage; ``reactgen`` and ``runtime`` answer --help."""
    result = walk.run(["python3", str(ROOT / "dev.py"), "--help"])
    assert result.returncode == 0, result.stderr
    assert "dev.py start" in result.stdout and "dev.py test" in result.stdout
    for argv in (["reactgen", "--help"], ["reactgen", "build", "--help"],
                 ["reactgen", "check", "--help"], ["reactgen", "validate", "--help"],
                 ["reactgen", "new", "--help"], ["runtime", "--help"]):
        result = walk.run(argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert "usage:" in result.stdout, argv


def test_mypy_of_the_clones_venv_checks_an_app_outside_it(walk: Walk) -> None:
    """The other install the tutorial offers: the clone's ``.venv`` (made by ``dev.py``, an
    editable install in compat mode). Its mypy, run in the user's folder, finds the types of
    ``runtime`` (setuptools' default editable install hides them from mypy)."""
    mypy = ROOT / ".venv" / "bin" / "mypy"
    if not mypy.exists():
        pytest.skip("no .venv in this checkout (python3 dev.py start makes it)")
    env = new_user_environment(walk.home / ".bin")
    result = subprocess.run([str(mypy), "--strict", "--cache-dir", str(walk.home / ".mypy"),
                             "invoices_app"], cwd=walk.cwd, env=env, capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    assert result.returncode == 0, (
        f"{result.stdout}{result.stderr}\n(if this says it cannot find runtime.reactor, .venv "
        "was installed before dev.py used editable_mode=compat: run python3 dev.py start)")


def test_dev_py_reinstalls_when_the_install_command_changes() -> None:
    """The marker that skips ``pip install`` covers the install command too, so a changed
    install mode (as the switch to ``editable_mode=compat``) re-installs."""
    sys.path.insert(0, str(ROOT))
    try:
        import dev
    finally:
        sys.path.remove(str(ROOT))
    assert dev.install_command()[-2:] == ["--config-settings", "editable_mode=compat"]
    plain = hashlib.sha256(dev.PYPROJECT.read_bytes()).hexdigest()
    assert dev.pyproject_hash() != plain


HOW_TO = ROOT / "docs" / "how-to.md"


def _how_to_blocks(kind: str) -> list[Step]:
    return [Step(match.group(1), dict(w.split("=", 1) for w in match.group(2).split() if "=" in w),
                 set(match.group(2).split()), match.group(3),
                 HOW_TO.read_text().count("\n", 0, match.start()) + 1)
            for match in FENCE.finditer(HOW_TO.read_text()) if kind in match.group(2).split()]


def test_how_to_definitions_validate(walk: Walk) -> None:
    """Each definition of docs/how-to.md is valid against the tutorial's invoice schema."""
    blocks = _how_to_blocks("howto-definition")
    assert len(blocks) >= 2
    for number, block in enumerate(blocks):
        folder = walk.home / f"howto-{number}"
        folder.mkdir()
        schema = walk.cwd / "schemas" / "invoices.schema.json"
        (folder / "invoices.schema.json").write_text(schema.read_text())
        (folder / "invoice_reminder.reactor.yaml").write_text(block.body)
        result = walk.run(["reactgen", "validate", str(folder)])
        assert result.returncode == 0, f"docs/how-to.md line {block.line}: {result.stderr}"
        assert result.stderr.count("warning") == 0, result.stderr


def test_how_to_integration_test_passes(walk: Walk) -> None:
    """The how-to's integration test (pytest plugin, reactgen_app, RuntimeHarness) passes in
    the tutorial's project, and mypy --strict accepts it."""
    blocks = _how_to_blocks("howto")
    assert {block.options.get("file") for block in blocks} >= {
        "tests/conftest.py", "pyproject.toml", "tests/test_integration.py"}
    for block in blocks:
        (walk.cwd / block.options["file"]).write_text(block.body)
    result = walk.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout
    result = walk.run(["mypy", "--strict", "invoices_app", "tests"])
    assert result.returncode == 0, result.stdout
