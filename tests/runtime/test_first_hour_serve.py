"""The first hour of a new user with ``runtime serve`` (issue 11): the embedded server's port and
URI, a database that does not answer, a taken port, an unknown flag, ``--app`` given a folder,
a handler that does not import, and DEBUG lines saying whether a change was planned or ignored.

Each test runs real ``runtime serve`` processes and checks what they print and how they exit.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from runtime_harness import REPO, App
from scenario import build, definition, handler, runs_of, start
from support import wait_until

from runtime.settings import ENVIRONMENT

RUNTIME = [sys.executable, "-m", "runtime"]
NOWHERE = "mongodb://127.0.0.1:1/"
"""Nothing listens on port 1: connections are refused at once."""


def _env(extra: dict[str, str] | None = None, app_root: Path | None = None) -> dict[str, str]:
    """The test's environment without runtime settings; ``app_root`` (if given) importable."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT.values()}
    paths = [str(app_root)] if app_root else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO), os.environ.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


def _runtime(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
             app_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUNTIME, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=_env(env, app_root), stdin=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Serving:
    """A ``runtime serve`` process with stdout and stderr in separate files."""

    def __init__(self, app: App, args: list[str], env: dict[str, str] | None = None) -> None:
        stamp = time.monotonic_ns()
        self.out_path = app.root / f"serve-{stamp}.out"
        self.err_path = app.root / f"serve-{stamp}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen([*RUNTIME, "serve", "--app", app.package, *args],
                                            cwd=app.root, env=_env(env, app.root), stdout=out,
                                            stderr=err, stdin=subprocess.DEVNULL)

    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def first_line(self, timeout: float = 30) -> str:
        """The first stdout line, once complete."""
        def line() -> str | None:
            assert self.process.poll() is None, f"exited early:\n{self.stderr()[-3000:]}"
            text = self.stdout()
            return text.split("\n", 1)[0] if "\n" in text else None
        return wait_until(line, timeout=timeout, message="a first line on stdout")

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.process.poll() is None, f"exited early:\n{self.stderr()[-3000:]}"
            return re.search(pattern, self.stderr())
        return wait_until(found, timeout=timeout, message=f"{pattern!r} in the log")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def serving() -> Iterator[Any]:
    started: list[Serving] = []

    def begin(app: App, args: list[str], env: dict[str, str] | None = None) -> Serving:
        started.append(Serving(app, args, env))
        return started[-1]

    yield begin
    for each in started:
        if each.process.poll() is None:
            each.process.kill()
            each.process.wait()


def _ping(uri: str) -> bool:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        return bool(client.admin.command("ping").get("ok"))
    finally:
        client.close()


# ------------------------------------------------------------------ the embedded server's URI


@pytest.mark.embedded_only
def test_the_embedded_server_keeps_its_port_and_publishes_its_uri(
        make_app: AppBuilder, serving: Any, tmp_path: Path) -> None:
    app = build(make_app)
    data_dir = tmp_path / "data"
    first = serving(app, ["--data-dir", str(data_dir)])
    uri = first.first_line()
    assert re.fullmatch(r"mongodb://127\.0\.0\.1:\d+/", uri), uri
    uri_file = data_dir / "uri"
    assert uri_file.read_text(encoding="utf-8") == f"{uri}\n"
    assert stat.S_IMODE(uri_file.stat().st_mode) == 0o600
    first.wait_for_log(r"event=runtime\.started")
    assert _ping(uri)
    assert first.stop() == 0
    assert first.stdout() == f"{uri}\n", "stdout holds the URI line only"

    # The same data folder: the recorded port again.
    again = serving(app, ["--data-dir", str(data_dir)])
    assert again.first_line() == uri
    again.wait_for_log(r"event=runtime\.started")
    assert again.stop() == 0

    # A fixed port, from the flag or its variable.
    port = _free_port()
    fixed = serving(app, ["--data-dir", str(data_dir)], {"REACTGEN_DB_PORT": str(port)})
    assert fixed.first_line() == f"mongodb://127.0.0.1:{port}/"
    assert uri_file.read_text(encoding="utf-8") == f"mongodb://127.0.0.1:{port}/\n"
    fixed.wait_for_log(r"event=runtime\.started")
    assert _ping(f"mongodb://127.0.0.1:{port}/")
    assert fixed.stop() == 0


@pytest.mark.embedded_only
def test_a_recorded_port_that_is_taken_gives_way_to_a_free_one(
        make_app: AppBuilder, serving: Any, tmp_path: Path) -> None:
    app = build(make_app)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        (data_dir / "uri").write_text(f"mongodb://127.0.0.1:{busy}/\n", encoding="utf-8")
        process = serving(app, ["--data-dir", str(data_dir)])
        uri = process.first_line()
        assert uri != f"mongodb://127.0.0.1:{busy}/"
        process.wait_for_log(r"event=runtime\.started")
        assert _ping(uri)
        assert process.stop() == 0


def test_a_taken_db_port_is_a_clear_error(make_app: AppBuilder, tmp_path: Path) -> None:
    app = build(make_app)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = _runtime("serve", "--app", app.package, "--data-dir", str(tmp_path / "data"),
                          "--db-port", str(busy), cwd=app.root, app_root=app.root)
    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == (
        f"runtime serve: error: --db-port {busy} is in use (another process listens on "
        f"127.0.0.1:{busy}); stop it or choose another port with --db-port (or "
        "REACTGEN_DB_PORT)")
    assert result.stdout == ""
    assert not (tmp_path / "data").exists(), "nothing was started"


def test_a_bad_db_port_names_the_flag(make_app: AppBuilder) -> None:
    app = build(make_app)
    result = _runtime("serve", "--app", app.package, "--db-port", "70000", cwd=app.root,
                      app_root=app.root)
    assert result.returncode == 2, result
    assert result.stderr.strip() == ("runtime serve: error: --db-port must be a port number "
                                     "(0-65535), got '70000'")


# ------------------------------------------------------------------ a database that does not answer


def test_a_database_that_does_not_answer_is_one_short_error(make_app: AppBuilder) -> None:
    app = build(make_app)
    began = time.monotonic()
    result = _runtime("serve", "--app", app.package, "--mongodb-uri",
                      "mongodb://ada:s3cret@127.0.0.1:1/?replicaSet=rs9", cwd=app.root,
                      app_root=app.root, env={"REACTGEN_CONNECT_TIMEOUT_MS": "800"})
    elapsed = time.monotonic() - began
    assert result.returncode == 1, result
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert "connecting to MongoDB at 127.0.0.1:1 (replica set rs9), waiting up to 0.8 s" \
        in result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith("runtime serve: error: no MongoDB server answered at 127.0.0.1:1 "
                            "(replica set rs9) within 0.8 s (last error: 127.0.0.1:1: "), error
    for advice in ("Check that the server is running and reachable from here",
                   "that --mongodb-uri (or MONGODB_URI) names the right host and port",
                   "that the replica set is named 'rs9'",
                   "wait longer with --connect-timeout-ms (or REACTGEN_CONNECT_TIMEOUT_MS)"):
        assert advice in error, error
    assert len(error) < 600, error
    for absent in ("Topology", "s3cret", "Traceback"):
        assert absent not in result.stderr, result.stderr


def test_the_connect_timeout_flag_is_validated(make_app: AppBuilder) -> None:
    app = build(make_app)
    result = _runtime("serve", "--app", app.package, "--connect-timeout-ms", "soon",
                      cwd=app.root, app_root=app.root)
    assert result.returncode == 2, result
    assert result.stderr.strip() == ("runtime serve: error: --connect-timeout-ms must be a "
                                     "positive integer, got 'soon'")


# ------------------------------------------------------------------ taken ports, unknown flags


@pytest.mark.parametrize(("flag", "variable"), [("--metrics-port", "REACTGEN_METRICS_PORT"),
                                                ("--dashboard-port", "REACTGEN_DASHBOARD_PORT")])
def test_a_taken_port_is_reported_before_anything_starts(
        make_app: AppBuilder, tmp_path: Path, flag: str, variable: str) -> None:
    app = build(make_app)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = _runtime("serve", "--app", app.package, "--data-dir", str(tmp_path / "data"),
                          flag, str(busy), cwd=app.root, app_root=app.root)
    assert result.returncode == 1, result
    assert result.stderr.strip() == (
        f"runtime serve: error: {flag} {busy} is in use (another process listens on "
        f"127.0.0.1:{busy}); stop it or choose another port with {flag} (or {variable})")
    assert not (tmp_path / "data").exists(), "the embedded server was started"


@pytest.mark.parametrize("command", ["serve", "db", "dashboard"])
def test_an_unknown_flag_prints_the_usage_of_the_subcommand(command: str) -> None:
    result = _runtime(command, "--bogus")
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"usage: runtime {command} "), result.stderr
    assert result.stderr.splitlines()[-1] == \
        f"runtime {command}: error: unrecognized arguments: --bogus"


# ------------------------------------------------------------------ --app


def test_app_accepts_the_folder_reactgen_build_wrote(
        make_app: AppBuilder, tmp_path: Path) -> None:
    app = build(make_app)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = app.root / app.package
    for given in (f"{folder}/", os.path.relpath(folder, elsewhere)):
        # Run from another folder, the app not on PYTHONPATH: only the folder names it.
        result = _runtime("serve", "--app", given, "--mongodb-uri", NOWHERE,
                          "--connect-timeout-ms", "200", cwd=elsewhere)
        assert result.returncode == 1, result
        assert "connecting to MongoDB at 127.0.0.1:1" in result.stderr, result.stderr
        assert result.stderr.splitlines()[-1].startswith(
            "runtime serve: error: no MongoDB server answered"), result.stderr


def test_app_errors_say_what_to_pass(tmp_path: Path) -> None:
    hint = ("pass the folder `reactgen build --out` wrote (it holds registry.py), e.g. "
            "--app ./generated, or its package name, e.g. --app generated")
    result = _runtime("serve", "--app", "./myapp/generated", "--mongodb-uri", NOWHERE,
                      cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stderr.strip() == \
        f"runtime serve: error: --app ./myapp/generated: no such folder; {hint}"

    (tmp_path / "defs").mkdir()
    result = _runtime("serve", "--app", "defs/", "--mongodb-uri", NOWHERE, cwd=tmp_path)
    assert result.returncode == 1, result
    assert result.stderr.strip() == (
        f"runtime serve: error: --app defs/: {(tmp_path / 'defs').resolve()} has no "
        f"registry.py, so it is not a package built by `reactgen build`; {hint}")

    result = _runtime("serve", "--app", "myapp.generated", "--mongodb-uri", NOWHERE,
                      cwd=tmp_path)
    assert result.returncode == 1, result
    assert "cannot import myapp.generated.registry (no module named 'myapp'" in result.stderr
    assert "pass the folder `reactgen build --out` wrote (e.g. --app ./generated)" \
        in result.stderr
    # The old hint suggested `reactgen build ... --out myapp.generated` (not a folder).
    assert "--out myapp.generated" not in result.stderr


# ------------------------------------------------------------------ handler modules


def test_a_handler_with_a_syntax_error_is_reported_by_file_and_line(
        make_app: AppBuilder) -> None:
    app = build(make_app)
    path = app.handler_path("record")
    path.write_text("import os\n\nasync def handle(ctx)\n    pass\n", encoding="utf-8")
    result = _runtime("serve", "--app", app.package, "--mongodb-uri", NOWHERE, cwd=app.root,
                      app_root=app.root)
    assert result.returncode == 1, result
    assert result.stderr.strip() == \
        f"runtime serve: error: handler module {path} line 3: expected ':'"


def test_a_handler_that_fails_while_importing_is_reported_by_file_and_line(
        make_app: AppBuilder) -> None:
    app = build(make_app)
    path = app.handler_path("record")
    path.write_text("import os\n\nLIMIT = undefined_setting\n", encoding="utf-8")
    result = _runtime("serve", "--app", app.package, "--mongodb-uri", NOWHERE, cwd=app.root,
                      app_root=app.root)
    assert result.returncode == 1, result
    assert result.stderr.strip() == (
        f"runtime serve: error: handler module {path} line 3: NameError: name "
        "'undefined_setting' is not defined")


# ------------------------------------------------------------------ DEBUG: planned or ignored


FILTERED = "    trigger:\n      filter: {n: {$gt: 0}}\n      watch: [n]\n"


def _line(message: str, **fields: str) -> str:
    """A pattern for one log line: ``message``, then each ``key=value`` (a regex) in any
    order."""
    ahead = "".join(f"(?=[^\\n]* {key}={value}(?: |$))" for key, value in fields.items())
    return f"(?m){re.escape(message)}{ahead}"


def test_debug_logs_say_whether_a_change_was_planned_or_ignored(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = make_app({"record": definition(trigger=FILTERED)}, {"record": handler("record")})
    process = start(start_runtime, app, "a")  # at DEBUG (the harness's default)
    process.wait_for_log(r"event=leader\.gained")
    common = {"reactor": "record", "collection": "things"}
    db.things.insert_one({"_id": "zero", "n": 0})
    process.wait_for_log(_line("change ignored by record: filter not matched",
                               event=r"change\.ignored", source_id="zero", task="kept",
                               reason="'filter not matched'", **common))
    db.things.insert_one({"_id": "one", "n": 1})
    process.wait_for_log(_line("change planned for record: new task", event=r"change\.planned",
                               source_id="one", task_id="new", state="pending", **common))
    wait_until(lambda: (db.things_tasks.find_one({"sourceId": "one"}) or {}).get("status")
               == "completed")
    # An update of unwatched fields never reaches the planner (the change stream leaves it
    # out); a replacement does, and leaves the watched ``n`` as it was.
    db.things.replace_one({"_id": "one"}, {"n": 1, "note": "not watched"})
    process.wait_for_log(_line("change ignored by record: watched fields unchanged",
                               event=r"change\.ignored", source_id="one", task_id=r"\w+",
                               state="completed", reason="'watched fields unchanged'",
                               **common))
    db.things.update_one({"_id": "one"}, {"$set": {"n": 2}})
    process.wait_for_log(_line("change planned for record: watched fields changed",
                               event=r"change\.planned", source_id="one", task_id=r"\w+",
                               state="pending", **common))
    db.things.delete_one({"_id": "zero"})
    process.wait_for_log(_line("change ignored by record: document deleted",
                               event=r"change\.ignored", source_id="zero", task="retired",
                               reason="'document deleted'", **common))
    assert len(runs_of(db, "one")) >= 1


def test_info_logs_stay_quiet_about_each_change(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    process = start(start_runtime, app, "a", "--log-level", "INFO")
    process.wait_for_log(r"event=leader\.gained")
    db.things.insert_one({"_id": "quiet", "n": 1})
    wait_until(lambda: runs_of(db, "quiet"))
    assert "event=change." not in process.log()
