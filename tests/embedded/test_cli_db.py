"""The ``runtime db`` command line: URI on stdout, logs on stderr, clear errors on bad input.

These run ``python -m runtime db`` as a child process directly (not through
:class:`EmbeddedServer`) to see exactly what it prints and how it exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from pymongo import MongoClient

pytestmark = pytest.mark.embedded_only

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _db(*args: str) -> list[str]:
    return [sys.executable, "-m", "runtime", "db", *args]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``runtime db`` to completion (for arguments that make it exit at once)."""
    return subprocess.run(_db(*args), capture_output=True, text=True, timeout=TIMEOUT,
                          env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL, check=False)


def _first_line(stream: IO[str]) -> str:
    """The first line of ``stream``, read with a deadline (a hung server must fail the test)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(TIMEOUT)
    assert lines, f"no line on stdout within {TIMEOUT}s"
    return lines[0]


class Running:
    """A ``runtime db`` child with pipes for stdout and stderr."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(_db(*args), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
                                        stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        self.uri = _first_line(self.process.stdout).rstrip("\n")

    def terminate(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``signum``; returns (exit status, rest of stdout, stderr)."""
        self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, out, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=TIMEOUT)


@pytest.fixture
def running() -> Iterator[Any]:
    children: list[Running] = []

    def start(*args: str) -> Running:
        child = Running(*args)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def _ping(uri: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        assert client.admin.command("ping")["ok"] == 1
        client.cli.things.insert_one({"_id": 1})
    finally:
        client.close()


# -- normal runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["--in-memory", "--dbpath"])
def test_port_zero_prints_uri_first_and_logs_only_on_stderr(running: Any, tmp_path: Path,
                                                            storage: str) -> None:
    args = ["--port", "0", storage] + ([str(tmp_path / "db")] if storage == "--dbpath" else [])
    child = running(*args)
    assert child.uri.startswith("mongodb://127.0.0.1:")
    port = int(child.uri.rstrip("/").rsplit(":", 1)[1])
    assert 0 < port < 65536
    _ping(child.uri)
    status, out, err = child.terminate()
    assert status == 0
    assert out == "", "nothing but the URI may go to stdout"
    assert "listening on 127.0.0.1:" in err
    assert "embedded server stopped" in err


def test_sigint_also_shuts_down_cleanly(running: Any, tmp_path: Path) -> None:
    child = running("--port", "0", "--dbpath", str(tmp_path / "db"))
    _ping(child.uri)
    status, _, err = child.terminate(signal.SIGINT)
    assert status == 0, err
    assert (tmp_path / "db" / "snapshot.bson").exists()


def test_log_level_warning_keeps_stderr_quiet(running: Any) -> None:
    child = running("--port", "0", "--in-memory", "--log-level", "warning")
    _ping(child.uri)
    status, out, err = child.terminate()
    assert (status, out) == (0, "")
    assert "listening" not in err


def test_explicit_free_port_is_used(running: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = running("--port", str(port), "--in-memory")
    assert child.uri == f"mongodb://127.0.0.1:{port}/"
    _ping(child.uri)


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "--port: must be between 0 and 65535, got 70000"),
    (["--port", "-1"], "--port: must be between 0 and 65535, got -1"),
    (["--port", "http"], "--port: not a port number: 'http'"),
    (["--port", "0", "--dbpath", "x", "--in-memory"], "not allowed with argument"),
    (["--port", "0", "--oplog-size-mb", "0"], "--oplog-size-mb: must be a positive number"),
    (["--port", "0", "--oplog-size-mb", "nan"], "--oplog-size-mb: must be a positive number"),
    (["--port", "0", "--log-level", "chatty"], "--log-level: unknown level 'chatty'"),
    (["--port", "0", "--checkpoint-mb", "-5"], "--checkpoint-mb: must be a positive number"),
    (["--port", "0", "--dbpath", ""], "--dbpath: must not be empty"),
    (["--port", "0", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_bad_arguments_give_clear_error(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "usage: runtime" in result.stderr


def test_port_in_use_gives_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("--port", str(port), "--dbpath", str(tmp_path / "db"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_of_running_server_is_in_use(running: Any) -> None:
    child = running("--port", "0", "--in-memory")
    port = child.uri.rstrip("/").rsplit(":", 1)[1]
    result = _run("--port", port, "--in-memory")
    assert result.returncode == 1
    assert "Address already in use" in result.stderr
    _ping(child.uri)  # the first server is unaffected


def test_dbpath_that_is_a_file_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "afile"
    path.write_text("not a directory")
    result = _run("--port", "0", "--dbpath", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"--dbpath {path} exists and is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_dbpath_gives_clear_error(tmp_path: Path) -> None:
    parent = tmp_path / "file-parent"
    parent.write_text("x")
    result = _run("--port", "0", "--dbpath", str(parent / "db"))
    assert result.returncode == 1
    assert "cannot create --dbpath" in result.stderr
    assert "Traceback" not in result.stderr


def test_dbpath_in_use_gives_clear_error(running: Any, tmp_path: Path) -> None:
    running("--port", "0", "--dbpath", str(tmp_path / "db"))
    result = _run("--port", "0", "--dbpath", str(tmp_path / "db"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "is in use by another running server" in result.stderr
