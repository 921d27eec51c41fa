"""Run the embedded MongoDB-compatible server as a child process.

:class:`EmbeddedServer` starts ``python -m runtime db`` in a subprocess, waits for
the connection URI that the server prints as the first line on its standard output,
and stops the process again. It is meant for tests, demos and local development::

    from runtime.embedded.process import EmbeddedServer

    with EmbeddedServer() as server:          # in-memory, free port
        client = pymongo.MongoClient(server.uri)
        client.admin.command("ping")

With a ``dbpath`` the data survives :meth:`EmbeddedServer.kill` and
:meth:`EmbeddedServer.restart`, and the restarted server listens on the same port, so
clients created with the old URI keep working.

The child's standard error (its log) goes to a file, :attr:`EmbeddedServer.log_path`,
never to a pipe that could fill up and block the server. Anything the child prints on
standard output after the URI line is appended to the same file. The log is private to the
user whatever the umask: the file is 0600 and the folders created for it (or for ``dbpath``)
are 0700.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final
from urllib.parse import urlsplit

__all__ = ["URI_FILE", "EmbeddedServer", "EmbeddedServerError", "port_is_free",
           "recorded_port", "write_uri_file"]

#: Name of the file, in a data folder, that holds the URI of the server last started there.
URI_FILE: Final = "uri"

#: Default time allowed for the child to print its URI.
DEFAULT_STARTUP_TIMEOUT: Final = 30.0
#: Default time allowed for a graceful shutdown before SIGKILL.
DEFAULT_STOP_TIMEOUT: Final = 10.0
#: Default time during which :meth:`EmbeddedServer.restart` retries binding the old port.
DEFAULT_REBIND_TIMEOUT: Final = 10.0

_LOG_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_STDERR_TAIL_BYTES: Final = 8192
_STDERR_TAIL_LINES: Final = 40
_ADDRESS_IN_USE = re.compile(r"address already in use|eaddrinuse|errno 98\b|errno 48\b", re.I)
# The directory that contains the ``runtime`` package, so that the child imports the
# same code as this process even when the project is not pip-installed.
_IMPORT_ROOT: Final = Path(__file__).resolve().parents[2]


def write_uri_file(path: Path, uri: str) -> None:
    """Write ``uri`` (one line) to ``path``, mode 0600, replacing it atomically so that a
    reader never sees half a URI."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _LOG_MODE)
    try:
        os.fchmod(fd, _LOG_MODE)
        os.write(fd, f"{uri}\n".encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def recorded_port(path: Path) -> int | None:
    """The port of the URI in ``path`` (written by :func:`write_uri_file`), or ``None`` if
    the file is missing or holds no usable URI."""
    try:
        line = path.read_text(encoding="utf-8").strip()
        port = urlsplit(line).port
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return port if port else None


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a later bind may still lose a race)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started, or was used in the wrong state."""


def _kill_quietly(process: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup: SIGKILL a child that was never stopped (used by a finalizer)."""
    if process.poll() is None:
        try:
            process.kill()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each 0700 whatever the umask.

    Folders that already exist are left as they are (they may be shared ones, such as /tmp).
    """
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: not ours to change
        os.chmod(path, _DIR_MODE)  # mkdir's mode is filtered by the umask


def _open_log(path: Path) -> IO[bytes]:
    """Open the log file for appending, creating it 0600 whatever the umask.

    A regular file left readable by others (by an older version, say) is made 0600 too;
    anything else (``/dev/null``) is used as it is.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _LOG_MODE)
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != _LOG_MODE:
            os.fchmod(fd, _LOG_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


class _StdoutReader(threading.Thread):
    """Reads the child's stdout: hands over the first line, then appends the rest to the log.

    Draining stdout for the whole life of the child keeps it from blocking on a full pipe.
    ``None`` in :attr:`first_line` means the pipe closed before a complete line arrived.
    """

    def __init__(self, stream: IO[bytes], log_path: Path) -> None:
        super().__init__(name="embedded-server-stdout", daemon=True)
        self._stream = stream
        self._log_path = log_path
        self.first_line: queue.Queue[str | None] = queue.Queue(maxsize=1)

    def run(self) -> None:
        first = True
        try:
            with _open_log(self._log_path) as log:
                for raw in self._stream:
                    if first:
                        first = False
                        if raw.endswith(b"\n"):
                            self.first_line.put(raw.decode("utf-8", "replace").strip())
                            continue
                        self.first_line.put(None)
                    log.write(b"[stdout] " + raw)
                    log.flush()
        except (OSError, ValueError):
            pass
        finally:
            if first:
                self.first_line.put(None)
            with contextlib.suppress(OSError):
                self._stream.close()


class EmbeddedServer:
    """The embedded MongoDB-compatible server, run as a child process.

    Use it as a context manager, or call :meth:`start` and :meth:`stop` yourself.

    Args:
        dbpath: Directory for the server's data files (created if missing). ``None``
            runs the server with ``--in-memory``; its data is then lost on stop/restart.
        oplog_size_mb: Passed as ``--oplog-size-mb`` when given.
        enable_test_commands: Passes ``--enable-test-commands`` (test-only commands).
        host: Interface to listen on (``--host``). A non-loopback address needs ``auth``
            or ``allow_unauthenticated_remote``.
        port: Port to listen on; ``0`` (the default) lets the server pick a free one.
        extra_args: Further arguments appended to ``runtime db``.
        startup_timeout: Seconds allowed for the child to print its URI.
        log_path: File that receives the child's stderr (appended to). By default, a
            file next to ``dbpath`` (``<dbpath>.log``) or a new temporary file when
            running in memory. The file is kept after the server stops.
        python: The Python interpreter that runs the server.
        env: Extra environment variables for the child (on top of ``os.environ``).
        auth: Passes ``--auth``: clients must authenticate (SCRAM) and hold the roles
            their commands need.
        users_file: Passed as ``--users-file`` (JSON or YAML list of users).
        allow_unauthenticated_remote: Passes ``--allow-unauthenticated-remote``.
    """

    def __init__(
        self,
        dbpath: Path | str | None = None,
        *,
        oplog_size_mb: int | None = None,
        enable_test_commands: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: Sequence[str] = (),
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        log_path: Path | str | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        auth: bool = False,
        users_file: Path | str | None = None,
        allow_unauthenticated_remote: bool = False,
    ) -> None:
        self.dbpath: Path | None = Path(dbpath) if dbpath is not None else None
        self.oplog_size_mb = oplog_size_mb
        self.enable_test_commands = enable_test_commands
        self.host = host
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.python = python
        self.env: dict[str, str] = dict(env or {})
        self.auth = auth
        self.users_file: Path | None = Path(users_file) if users_file is not None else None
        self.allow_unauthenticated_remote = allow_unauthenticated_remote
        self._requested_port = port
        self._log_path: Path | None = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: _StdoutReader | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], EmbeddedServer] | None = None
        self._uri: str | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ properties

    @property
    def uri(self) -> str:
        """The connection URI printed by the server, e.g. ``mongodb://127.0.0.1:27017/``.

        It stays valid across :meth:`restart`. After :meth:`stop` it still returns the
        last URI. Raises :class:`EmbeddedServerError` if the server was never started.
        """
        if self._uri is None:
            raise EmbeddedServerError("the embedded server has not been started")
        return self._uri

    @property
    def port(self) -> int:
        """The TCP port the server listens on (see :attr:`uri`)."""
        if self._port is None:
            raise EmbeddedServerError("the embedded server has not been started")
        return self._port

    @property
    def log_path(self) -> Path:
        """The file that receives the server's stderr (its log)."""
        if self._log_path is None:
            self._log_path = self._default_log_path()
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of the current (or last) child, or ``None`` if never started."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last child (negative: killed by that signal), or ``None``
        while it runs or if it was never started."""
        return self._process.poll() if self._process is not None else None

    # ------------------------------------------------------------------ lifecycle

    def command_line(self, port: int) -> list[str]:
        """The argv used to launch the server listening on ``port``."""
        argv = [self.python, "-m", "runtime", "db", "--host", self.host, "--port", str(port)]
        if self.dbpath is None:
            argv.append("--in-memory")
        else:
            argv += ["--dbpath", str(self.dbpath)]
        if self.oplog_size_mb is not None:
            argv += ["--oplog-size-mb", str(self.oplog_size_mb)]
        if self.enable_test_commands:
            argv.append("--enable-test-commands")
        if self.auth:
            argv.append("--auth")
        if self.users_file is not None:
            argv += ["--users-file", str(self.users_file)]
        if self.allow_unauthenticated_remote:
            argv.append("--allow-unauthenticated-remote")
        argv += self.extra_args
        return argv

    def start(self) -> str:
        """Start the server and wait until it prints its URI; return the URI.

        Raises:
            EmbeddedServerError: if it is already running, if the child exits before
                printing its URI, prints something else, or does not print it within
                ``startup_timeout`` seconds. The message includes the tail of the
                child's stderr; the child is not left running.
        """
        return self._launch(self._requested_port, rebind_timeout=0.0)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Shut the server down: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Returns the exit status (``0`` for a clean shutdown, negative for a signal), or
        ``None`` if the server was never started. Calling it again is harmless.
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._reap()
        return process.returncode

    def kill(self) -> int | None:
        """Kill the server with SIGKILL (no clean shutdown) and wait for it to exit.

        Returns the exit status (``-9`` on POSIX), or ``None`` if never started.
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
            process.wait()
        self._reap()
        return process.returncode

    def restart(
        self,
        timeout: float = DEFAULT_STOP_TIMEOUT,
        *,
        rebind_timeout: float = DEFAULT_REBIND_TIMEOUT,
    ) -> str:
        """Start the server again on the same port with the same options; return the URI.

        A running server is stopped first (as by :meth:`stop` with ``timeout``). With a
        ``dbpath`` the data is kept; in memory it is not. While the old port is still
        unavailable (e.g. a socket in TIME_WAIT), starting is retried for up to
        ``rebind_timeout`` seconds.
        """
        if self._port is None:
            raise EmbeddedServerError("restart() needs a server that was started before")
        if self.running:
            self.stop(timeout)
        uri = self._launch(self._port, rebind_timeout=rebind_timeout)
        return uri

    def __enter__(self) -> EmbeddedServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = "in-memory" if self.dbpath is None else str(self.dbpath)
        state = "running" if self.running else "stopped"
        return f"<EmbeddedServer {self._uri or '(not started)'} {where} {state}>"

    # ------------------------------------------------------------------ internals

    def _default_log_path(self) -> Path:
        if self.dbpath is not None:
            return self.dbpath.parent / f"{self.dbpath.name}.log"
        fd, name = tempfile.mkstemp(prefix="reactgen-embedded-", suffix=".log")
        os.close(fd)
        return Path(name)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        # The URI line must reach us even though stdout is a pipe (block-buffered).
        env["PYTHONUNBUFFERED"] = "1"
        root = str(_IMPORT_ROOT)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([root, *paths])
        return env

    def _launch(self, port: int, *, rebind_timeout: float) -> str:
        if self.running:
            raise EmbeddedServerError(f"the embedded server is already running at {self._uri}")
        self._reap()
        if self.dbpath is not None:
            _make_private_dirs(self.dbpath)
        deadline = time.monotonic() + rebind_timeout
        delay = 0.05
        while True:
            try:
                return self._launch_once(port)
            except _EarlyExit as failure:
                retry = port != 0 and _ADDRESS_IN_USE.search(failure.stderr_tail) is not None
                if not retry or time.monotonic() + delay > deadline:
                    raise EmbeddedServerError(str(failure)) from None
            # Back off before polling the port again (it is held by the OS, not by us).
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _launch_once(self, port: int) -> str:
        argv = self.command_line(port)
        log_path = self.log_path
        _make_private_dirs(log_path.parent)
        with _open_log(log_path) as log:
            log.write(
                f"--- reactgen EmbeddedServer: starting {' '.join(argv)}\n".encode(
                    "utf-8", "replace"
                )
            )
            log.flush()
            log_offset = log.tell()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._child_env(),
                close_fds=True,
                # Its own session: a terminal's Ctrl-C reaches only the parent, which then
                # stops the server after it has finished using it.
                start_new_session=True,
            )
        assert process.stdout is not None
        self._process = process
        self._finalizer = weakref.finalize(self, _kill_quietly, process)
        reader = _StdoutReader(process.stdout, log_path)
        self._reader = reader
        reader.start()

        try:
            line = reader.first_line.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.kill()
            raise EmbeddedServerError(
                self._describe_failure(
                    argv,
                    f"did not print its URI within {self.startup_timeout:g}s (killed it)",
                    log_offset,
                )
            ) from None
        if line is None:
            process.wait()
            self._reap()
            reason = f"exited with status {process.returncode} before printing its URI"
            tail = self._stderr_tail(log_offset)
            raise _EarlyExit(self._describe_failure(argv, reason, log_offset, tail), tail)

        uri, actual_port = self._parse_uri(line)
        if actual_port is None or (port != 0 and actual_port != port):
            self.kill()
            expected = f"port {port}" if port else "a mongodb:// URI"
            raise EmbeddedServerError(
                self._describe_failure(
                    argv, f"printed {line!r} as its first line, expected {expected}", log_offset
                )
            )
        self._uri = uri
        self._port = actual_port
        return uri

    @staticmethod
    def _parse_uri(line: str) -> tuple[str, int | None]:
        try:
            parts = urlsplit(line)
            port = parts.port
        except ValueError:
            return line, None
        if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.hostname:
            return line, None
        return line, port

    def _reap(self) -> None:
        """Release the resources of an exited child (reader thread, finalizer)."""
        if self._process is not None and self._process.poll() is None:
            return
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _stderr_tail(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(offset, size - _STDERR_TAIL_BYTES))
                data = log.read()
        except OSError as exc:
            return f"(could not read {self.log_path}: {exc})"
        lines = data.decode("utf-8", "replace").splitlines()[-_STDERR_TAIL_LINES:]
        return "\n".join(lines)

    def _describe_failure(
        self, argv: Sequence[str], reason: str, offset: int, tail: str | None = None
    ) -> str:
        if tail is None:
            tail = self._stderr_tail(offset)
        shown = "\n".join("    " + line for line in tail.splitlines()) or "    (empty)"
        return (
            f"embedded server {reason}\n"
            f"  command: {' '.join(argv)}\n"
            f"  log: {self.log_path}\n"
            f"  stderr (last lines):\n{shown}"
        )


class _EarlyExit(Exception):
    """Internal: the child exited before printing its URI (may be retried on restart)."""

    def __init__(self, message: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail
