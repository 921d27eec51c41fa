"""Building throw-away reactgen applications and running ``runtime serve`` on them in tests.

A test writes reactor definitions and handler code as text; :func:`build_app` compiles them with
the real ``reactgen build`` into a uniquely named package, and :class:`RuntimeProcess` runs
``runtime serve`` on it as a real process against the test's database. Handlers talk back to
the test through the database (e.g. by inserting into a ``runs`` collection), never through
shared memory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class App:
    """A built application: its folder (the cwd of runtime processes) and package name."""

    root: Path
    package: str

    def handler_path(self, module: str) -> Path:
        """Where a reactor module's handler lives."""
        return self.root / self.package / "handlers" / f"{module}.py"


def build_app(tmp_path: Path, definitions: dict[str, str], handlers: dict[str, str]) -> App:
    """Write ``definitions`` (file stem -> YAML) and build them; then write ``handlers``
    (reactor module -> Python source, dedented) over the generated stubs."""
    package = f"app_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "appdir"
    if root.exists():  # a second application in the same test (a new version, say)
        root = tmp_path / f"appdir-{package}"
    defs = root / "defs"
    defs.mkdir(parents=True)
    for stem, text in definitions.items():
        (defs / f"{stem}.reactor.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "generator", "build", "defs", "--out", package],
        cwd=root, capture_output=True, text=True, env=_env(root))
    if result.returncode != 0:
        raise AssertionError(f"reactgen build failed:\n{result.stdout}\n{result.stderr}")
    app = App(root, package)
    for module, source in handlers.items():
        code = textwrap.dedent(source).replace("{package}", package)
        app.handler_path(module).write_text(code, encoding="utf-8")
    return app


def _env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


@dataclass
class RuntimeProcess:
    """One ``runtime serve`` process."""

    app: App
    uri: str
    database: str
    instance_id: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> RuntimeProcess:
        """Start the process (logs at DEBUG into a file next to the app)."""
        self.log_path = self.app.root / f"runtime-{self.instance_id}.log"
        log = self.log_path.open("ab")
        argv = [*self.prefix, sys.executable, "-m", "runtime", "serve", "--app",
                self.app.package, "--mongodb-uri", self.uri, "--database", self.database,
                "--instance-id", self.instance_id, "--log-level", "DEBUG", *self.args]
        self.process = subprocess.Popen(argv, cwd=self.app.root, env=_env(self.app.root,
                                                                           self.env),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path and self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Poll the log until ``pattern`` (a regex) appears; fails with the log tail."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match:
                return match
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"runtime {self.instance_id} exited "
                                     f"({self.process.returncode}) before {pattern!r}:\n"
                                     f"{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not logged by {self.instance_id} within "
                                     f"{timeout}s:\n{self.log()[-4000:]}")
            time.sleep(0.02)

    def wait_started(self, timeout: float = 20) -> None:
        """Until workers run (``runtime.started``)."""
        self.wait_for_log(r"event=runtime\.started", timeout)

    def signal(self, signum: int) -> None:
        """Send a signal (SIGSTOP/SIGCONT pause and resume the process)."""
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"runtime {self.instance_id} did not stop within {timeout}s:"
                                 f"\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
