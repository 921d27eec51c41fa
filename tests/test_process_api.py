"""Tests of :class:`runtime.embedded.process.EmbeddedServer`.

The first group drives the class with small stand-in child processes, so the
process handling (URI hand-over, timeouts, signals, error messages) is checked on
its own. The second group runs the real ``runtime db`` server.
"""

from __future__ import annotations

import re
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient, WriteConcern
from support import ServerFactory, wait_until

from runtime.embedded.process import EmbeddedServer, EmbeddedServerError

URI_RE = re.compile(r"^mongodb://127\.0\.0\.1:(\d+)/$")

# ---------------------------------------------------------------------------------------
# Stand-in children: they follow the server's stdout/stderr/signal contract.

_WELL_BEHAVED = """
import signal, sys
port = int(sys.argv[1]) or 43210
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("starting", file=sys.stderr, flush=True)
print(f"mongodb://127.0.0.1:{port}/", flush=True)
print("more stdout goes to the log", flush=True)
signal.pause()
"""

_IGNORES_SIGTERM = """
import signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("mongodb://127.0.0.1:43211/", flush=True)
while True:
    signal.pause()
"""

_FAILS = """
import sys
print("fatal: cannot open the data files", file=sys.stderr, flush=True)
sys.exit(3)
"""

_HANGS = """
import signal, sys
print("warming up forever", file=sys.stderr, flush=True)
signal.pause()
"""

_PRINTS_GARBAGE = """
import signal
print("hello, not a uri", flush=True)
signal.pause()
"""


class ScriptedServer(EmbeddedServer):
    """An EmbeddedServer whose child is a small script instead of ``runtime db``."""

    def __init__(self, script: str, tmp_path: Path, **options: Any) -> None:
        options.setdefault("log_path", tmp_path / "child.log")
        super().__init__(**options)
        self.script = textwrap.dedent(script)

    def command_line(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(port)]


def test_scripted_uri_port_and_clean_stop(tmp_path: Path) -> None:
    with ScriptedServer(_WELL_BEHAVED, tmp_path) as server:
        assert server.running
        assert server.uri == "mongodb://127.0.0.1:43210/"
        assert server.port == 43210
        pid = server.pid
        # The child prints its second line right after the URI; stopping before it did would
        # test the race, not the forwarding (a SIGTERM in between ends the child first).
        wait_until(lambda: "[stdout] more stdout" in server.log_path.read_text(),
                   timeout=10, message="the child's later stdout never reached the log")
    assert not server.running
    assert server.returncode == 0
    assert server.pid == pid
    log = server.log_path.read_text()
    assert "starting" in log
    assert "[stdout] more stdout goes to the log" in log


def test_scripted_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    server = ScriptedServer(_IGNORES_SIGTERM, tmp_path)
    server.start()
    assert server.stop(timeout=0.5) == -9
    assert server.stop() == -9  # idempotent


def test_scripted_kill_and_restart_reuse_port(tmp_path: Path) -> None:
    server = ScriptedServer(_WELL_BEHAVED, tmp_path, port=43299)
    uri = server.start()
    assert uri == "mongodb://127.0.0.1:43299/"
    first_pid = server.pid
    assert server.kill() == -9
    assert not server.running
    assert server.uri == uri  # still known after the child is gone
    assert server.restart() == uri
    assert server.running and server.pid != first_pid
    assert server.restart() == uri  # restart of a running server stops it first
    assert server.stop() == 0


def test_scripted_early_exit_reports_status_and_stderr(tmp_path: Path) -> None:
    server = ScriptedServer(_FAILS, tmp_path)
    with pytest.raises(EmbeddedServerError) as info:
        server.start()
    message = str(info.value)
    assert "exited with status 3" in message
    assert "fatal: cannot open the data files" in message
    assert str(server.log_path) in message
    assert not server.running


def test_scripted_startup_timeout_kills_child(tmp_path: Path) -> None:
    server = ScriptedServer(_HANGS, tmp_path, startup_timeout=0.5)
    with pytest.raises(EmbeddedServerError) as info:
        server.start()
    assert "did not print its URI within 0.5s" in str(info.value)
    assert "warming up forever" in str(info.value)
    assert not server.running
    assert server.returncode == -9


def test_scripted_first_line_must_be_a_uri(tmp_path: Path) -> None:
    server = ScriptedServer(_PRINTS_GARBAGE, tmp_path)
    with pytest.raises(EmbeddedServerError, match="hello, not a uri"):
        server.start()
    assert not server.running


def test_state_errors(tmp_path: Path) -> None:
    server = ScriptedServer(_WELL_BEHAVED, tmp_path)
    with pytest.raises(EmbeddedServerError):
        _ = server.uri
    with pytest.raises(EmbeddedServerError):
        server.restart()
    assert server.stop() is None
    with server, pytest.raises(EmbeddedServerError, match="already running"):
        server.start()


def test_command_line_options(tmp_path: Path) -> None:
    server = EmbeddedServer(
        tmp_path / "data",
        oplog_size_mb=64,
        enable_test_commands=True,
        host="127.0.0.1",
        extra_args=["--verbose"],
    )
    argv = server.command_line(27017)
    assert argv[:4] == [sys.executable, "-m", "runtime", "db"]
    assert argv[4:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "27017",
        "--dbpath",
        str(tmp_path / "data"),
        "--oplog-size-mb",
        "64",
        "--enable-test-commands",
        "--verbose",
    ]
    assert server.log_path == tmp_path / "data.log"
    assert "--in-memory" in EmbeddedServer().command_line(0)


# ---------------------------------------------------------------------------------------
# The real server.


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    log = tmp_path_factory.mktemp("shared") / "server.log"
    with EmbeddedServer(log_path=log) as server:
        yield server


def _client(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, serverSelectionTimeoutMS=10_000)


@pytest.mark.embedded_only
def test_uri_form(shared_server: EmbeddedServer) -> None:
    match = URI_RE.match(shared_server.uri)
    assert match is not None, shared_server.uri
    assert int(match.group(1)) == shared_server.port
    assert shared_server.port > 0


@pytest.mark.embedded_only
def test_ping(shared_server: EmbeddedServer) -> None:
    with _client(shared_server.uri) as client:
        assert client.admin.command("ping")["ok"] == 1


def test_stop_sigterm_exits_zero(fresh_server: ServerFactory) -> None:
    server = fresh_server(in_memory=True)
    port = server.port
    assert server.stop() == 0
    assert server.returncode == 0
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_kill_and_restart_keep_data_and_port(fresh_server: ServerFactory) -> None:
    server = fresh_server()
    uri = server.uri
    with _client(uri) as client:
        orders = client.reactgen_test.get_collection(
            "orders", write_concern=WriteConcern(w=1, j=True)
        )
        orders.insert_many([{"_id": i, "qty": i * 10} for i in range(5)])

        assert server.kill() == -9
        assert server.restart() == uri
        # The same client (same URI) reconnects to the restarted server.
        assert sorted(d["_id"] for d in orders.find()) == [0, 1, 2, 3, 4]

        orders.update_one({"_id": 0}, {"$set": {"qty": 99}})
        assert server.restart() == uri  # graceful stop + start
        assert orders.find_one({"_id": 0}) == {"_id": 0, "qty": 99}
    assert server.stop() == 0


def test_clear_error_when_port_taken(fresh_server: ServerFactory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(EmbeddedServerError) as info:
            fresh_server(in_memory=True, port=port, startup_timeout=20)
    message = str(info.value)
    assert "exited with status" in message
    assert f"--port {port}" in message
    assert "stderr (last lines)" in message


def test_clear_error_on_bad_argument(fresh_server: ServerFactory) -> None:
    with pytest.raises(EmbeddedServerError) as info:
        fresh_server(in_memory=True, extra_args=["--no-such-option-xyz"])
    assert "exited with status" in str(info.value)
    assert "--no-such-option-xyz" in str(info.value)
