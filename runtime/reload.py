"""``runtime serve --reload``: the development loop.

A supervisor process that

* starts the embedded server once (unless ``--mongodb-uri`` names a database), so data and task
  state survive every restart;
* runs ``runtime serve --mongodb-uri <uri>`` (with the other flags given) as a child process;
* polls the definitions folder (``--schemas``) and the app's ``handlers/`` every
  :data:`POLL_INTERVAL_S` seconds. A definition change rebuilds the app in-process (the
  generator's own ``build``); if the build has problems they are printed and the running
  runtime is kept, else the runtime is restarted. A handler change restarts the runtime, unless
  a handler module does not compile: that is reported (file, line) and the running runtime is
  kept until the next change;
* restarts gracefully (SIGTERM, wait for the child's shutdown) and, on SIGTERM or Ctrl-C, stops
  the child and then the embedded server, and exits 0.

A runtime that exits by itself (a handler failing at import, say) is not restarted until the
next change, so a broken app does not crash-loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from runtime.cli_flags import Flag
from runtime.file_watch import Snapshot, Watch, changed, snapshot
from runtime.settings import ENVIRONMENT, RuntimeSettings
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.reload")

POLL_INTERVAL_S = 0.5
"""How often the watched files are compared with the last snapshot."""
SETTLE_MAX_S = 5.0
"""A burst of writes (an editor saving several files) is waited out, this long at most."""
STOP_MARGIN_S = 10.0
"""Beyond ``--shutdown-timeout-ms``, how long a stopping runtime may take before SIGKILL."""
SUPERVISOR_ONLY = ("reload", "schemas", "mongodb_uri", "data_dir", "db_port")
"""Settings the supervisor uses itself and does not pass on to the runtime it runs."""
DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")
EXIT_FAILURE = 1
EXIT_USAGE = 2


class ReloadError(Exception):
    """``--reload`` cannot start; the message says why and what to pass."""


def app_folder(app: str) -> Path:
    """The folder of the app package ``--app`` names (a folder, or a package name found from
    the current directory or ``sys.path``)."""
    hint = "pass the folder `reactgen build --out` wrote, e.g. --app ./generated"
    if os.sep in app or "/" in app or app.startswith("."):
        folder = Path(app).expanduser()
    else:
        folder = Path(*app.split("."))
        if not folder.is_dir():
            try:
                spec = importlib.util.find_spec(app)
            except (ImportError, ValueError):
                spec = None
            locations = list(spec.submodule_search_locations or []) if spec else []
            folder = Path(locations[0]) if locations else folder
    if not (folder / "registry.py").is_file():
        raise ReloadError(f"--reload: cannot find the app package folder of --app {app} "
                          f"(looked for {folder / 'registry.py'}); {hint}")
    return folder


def schemas_folder(settings: RuntimeSettings) -> Path | None:
    """The definitions folder to watch: ``--schemas``, else ``./schemas`` if it exists."""
    if settings.schemas is not None:
        folder = Path(settings.schemas).expanduser()
        if not folder.is_dir():
            raise ReloadError(f"--schemas {settings.schemas}: no such folder; pass the folder "
                              "with your *.reactor.yaml files")
        return folder
    default = Path("schemas")
    return default if default.is_dir() else None


def child_command(args: argparse.Namespace, flags: Iterable[Flag], uri: str) -> list[str]:
    """``runtime serve`` with the flags given on the command line (but not the supervisor's
    own) and ``--mongodb-uri uri``."""
    command = [sys.executable, "-m", "runtime", "serve"]
    for spec in flags:
        raw = getattr(args, spec.name, None)
        if raw is None or spec.name in SUPERVISOR_ONLY:
            continue
        command += [spec.flag] if spec.switch else [spec.flag, str(raw)]
    return [*command, "--mongodb-uri", uri]


def child_environment() -> dict[str, str]:
    """This process's environment without the supervisor's own variables."""
    dropped = {ENVIRONMENT[name] for name in SUPERVISOR_ONLY}
    return {key: value for key, value in os.environ.items() if key not in dropped}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _names(paths: Sequence[Path]) -> str:
    shown = [_shown(path) for path in paths[:3]]
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(shown) + more


class Supervisor:
    """Watches, rebuilds and restarts; see the module documentation."""

    def __init__(self, settings: RuntimeSettings, command: list[str], app_dir: Path,
                 schemas: Path | None, stop: threading.Event) -> None:
        self.settings = settings
        self.command = command
        self.app_dir = app_dir
        self.schemas = schemas
        self.stop = stop
        self.child: subprocess.Popen[bytes] | None = None
        self.child_reported = False
        self.definitions = Watch(schemas, DEFINITION_SUFFIXES) if schemas else None
        self.handlers = Watch(app_dir / "handlers", (".py",))

    # ------------------------------------------------------------------ the child

    def start_child(self) -> None:
        """Start ``runtime serve`` on the current code."""
        self.child = subprocess.Popen(self.command, env=child_environment(),
                                      stdin=subprocess.DEVNULL)
        self.child_reported = False
        log_event(log, logging.INFO, f"runtime started (pid {self.child.pid})",
                  event="reload.started", pid=self.child.pid)

    def stop_child(self) -> None:
        """SIGTERM and wait for the graceful shutdown (SIGKILL if it takes far too long)."""
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        limit = self.settings.shutdown_timeout_ms / 1000 + STOP_MARGIN_S
        try:
            child.wait(limit)
        except subprocess.TimeoutExpired:
            log_event(log, logging.WARNING, f"runtime did not stop within {limit:g} s; killed",
                      event="reload.killed", pid=child.pid)
            child.kill()
            child.wait()

    def restart(self) -> None:
        """Stop the running child (if any) and start a new one."""
        self.stop_child()
        if not self.stop.is_set():
            self.start_child()

    def check_child(self) -> None:
        """Say once that the runtime exited by itself; it is restarted on the next change."""
        if self.child is None or self.child_reported:
            return
        code = self.child.poll()
        if code is None or self.stop.is_set():
            return
        self.child_reported = True
        log_event(log, logging.WARNING, f"runtime exited with code {code}; fix the problem "
                  "above, the next change of a definition or handler starts it again",
                  event="reload.exited", code=code)

    # ------------------------------------------------------------------ builds and checks

    def build(self) -> int | None:
        """Rebuild the app from the definitions: the number of files written or removed, or
        ``None`` when the build has problems (printed)."""
        from generator.build import build
        from generator.errors import BuildError

        assert self.schemas is not None
        project = Path.cwd()
        try:
            result = build(self.schemas, self.app_dir, project,
                           project / ".reactgen" / "cache" / "models")
        except BuildError as exc:
            print(f"reactgen: {len(exc.problems)} problem(s); nothing was written:",
                  file=sys.stderr)
            for problem in exc.problems:
                print("  " + problem.render(project).replace("\n", "\n  "), file=sys.stderr)
            sys.stderr.flush()
            return None
        for warning in result.warnings:
            print("reactgen: warning: " + warning.replace("\n", "\n  "), file=sys.stderr)
        return len(result.written) + len(result.removed)

    def handler_problem(self) -> str | None:
        """Why a handler module does not compile (file and line), or ``None``."""
        from generator.errors import BuildError
        from generator.stub_check import check_handler_syntax

        try:
            check_handler_syntax(self.app_dir)
        except BuildError as exc:
            return "; ".join(problem.render(Path.cwd()).split("\n", 1)[0]
                             for problem in exc.problems)
        return None

    # ------------------------------------------------------------------ the loop

    def snapshots(self) -> tuple[Snapshot, Snapshot]:
        """The definitions' and the handlers' snapshots."""
        return (snapshot(self.definitions) if self.definitions else {},
                snapshot(self.handlers))

    def settle(self, definitions: Snapshot, handlers: Snapshot) -> tuple[Snapshot, Snapshot]:
        """Wait until a poll sees no further writes (at most :data:`SETTLE_MAX_S`)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        while not self.stop.wait(POLL_INTERVAL_S / 2) and time.monotonic() < deadline:
            again = self.snapshots()
            if again == (definitions, handlers):
                break
            definitions, handlers = again
        return definitions, handlers

    def start(self) -> None:
        """The first build (with ``--schemas``) and the first runtime."""
        where = f"definitions in {_shown(self.schemas)}/ and " if self.schemas else ""
        log_event(log, logging.INFO, f"reload: watching {where}handlers in "
                  f"{_shown(self.handlers.folder)}/ (every {POLL_INTERVAL_S:g} s)",
                  event="reload.watching")
        if self.schemas is None:
            log_event(log, logging.INFO, "no ./schemas folder: definition changes are not "
                      "rebuilt; pass --schemas DIR (or REACTGEN_SCHEMAS) for that",
                      event="reload.no_schemas")
        elif (written := self.build()) is None:
            log_event(log, logging.WARNING, "the definitions have problems (above); waiting "
                      "for a change", event="reload.build_failed")
            return
        elif written:
            log_event(log, logging.INFO, f"built {_shown(self.app_dir)}/ ({written} "
                      "file(s) changed)", event="reload.built", files=written)
        problem = self.handler_problem()
        if problem is not None:
            log_event(log, logging.WARNING, f"{problem}; waiting for a change",
                      event="reload.handler_error")
            return
        self.start_child()

    def react(self, definitions: list[Path], handlers: list[Path]) -> None:
        """Rebuild and/or restart for the files that changed."""
        out = _shown(self.app_dir)
        if definitions:
            what = f"definitions changed ({_names(definitions)})"
            written = self.build()
            if written is None:
                kept = "keeping the running runtime" if self.running() else "not started"
                log_event(log, logging.WARNING, f"{what}: the build has problems (above); "
                          f"{kept}, waiting for the next change", event="reload.build_failed")
                return
            if not written and not handlers and self.running():
                log_event(log, logging.INFO, f"{what}: {out}/ is unchanged, not restarting",
                          event="reload.unchanged")
                return
            reason = f"{what}: rebuilt {out}/ ({written} file(s))"
        else:
            reason = f"{_names(handlers)} changed"
        problem = self.handler_problem()
        if problem is not None:
            kept = "keeping the running runtime" if self.running() else "not started"
            log_event(log, logging.WARNING, f"{reason}, but {problem}; {kept}, waiting for "
                      "the next change", event="reload.handler_error")
            return
        log_event(log, logging.INFO, f"{reason}, restarting", event="reload.restarting")
        self.restart()

    def running(self) -> bool:
        """Whether a runtime child is running now."""
        return self.child is not None and self.child.poll() is None

    def run(self) -> None:
        """Until :attr:`stop` is set."""
        self.start()
        # What the first build wrote (new handler stubs) is not a change.
        definitions, handlers = self.snapshots()
        while not self.stop.wait(POLL_INTERVAL_S):
            self.check_child()
            now = self.snapshots()
            if now == (definitions, handlers):
                continue
            settled = self.settle(*now)
            if self.stop.is_set():
                break
            self.react(changed(definitions, settled[0]), changed(handlers, settled[1]))
            # Stubs a build created are part of this round, not the next one.
            definitions, handlers = self.snapshots()


def run_reload(settings: RuntimeSettings, args: argparse.Namespace,
               flags: Sequence[Flag]) -> int:
    """Entry point of ``runtime serve --reload``; returns the exit code."""
    from runtime.serve_cli import start_embedded

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    sys.path.insert(0, os.getcwd())
    try:
        app_dir = app_folder(settings.app)
        schemas = schemas_folder(settings)
    except ReloadError as exc:
        print(f"runtime serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    embedded: Any = None
    uri = settings.mongodb_uri
    if not uri:
        from runtime.embedded.process import EmbeddedServerError

        try:
            embedded, uri = start_embedded(settings)
        except (EmbeddedServerError, OSError) as exc:
            print(f"runtime serve: error: cannot start the embedded server under --data-dir "
                  f"{settings.data_dir}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(uri, flush=True)
        log_event(log, logging.INFO, f"embedded MongoDB-compatible server listening on {uri} "
                  f"(data in {Path(settings.data_dir) / 'db'}); it keeps running across "
                  "reloads", event="embedded.started", uri=uri)
    supervisor = Supervisor(settings, child_command(args, flags, uri), app_dir, schemas, stop)
    try:
        supervisor.run()
    finally:
        log_event(log, logging.INFO, "stopping", event="reload.stopping")
        supervisor.stop_child()
        if embedded is not None:
            embedded.stop()
    log_event(log, logging.INFO, "stopped", event="reload.stopped")
    return 0
