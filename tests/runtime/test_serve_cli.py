"""``runtime serve`` as a command: help, environment variables, bad values, the embedded server
when no URI is given, and a missing application package."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import AppBuilder
from pymongo import MongoClient
from pymongo.database import Database
from runtime_harness import REPO, App
from scenario import build, leader, ms, runs_of
from support import wait_until

from runtime.settings import ENVIRONMENT

SERVE = [sys.executable, "-m", "runtime", "serve"]


def _env(extra: dict[str, str], root: Path | None = None) -> dict[str, str]:
    """The test's environment without any runtime setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT.values()}
    paths = ([str(root)] if root else []) + [str(REPO), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=60,
                          env=_env(env or {}, cwd), cwd=cwd or REPO)


class Serve:
    """A ``runtime serve`` process started with exactly the given flags and environment."""

    def __init__(self, app: App, args: list[str], env: dict[str, str]) -> None:
        self.log_path = app.root / f"serve-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([*SERVE, *args], cwd=app.root,
                                            env=_env(env, app.root), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.process.poll() is None, f"exited early:\n{self.log()[-3000:]}"
            return re.search(pattern, self.log())
        return wait_until(found, timeout=timeout, message=f"{pattern!r} in the log")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"did not stop:\n{self.log()[-3000:]}") from None


@pytest.fixture
def serve() -> Any:
    started: list[Serve] = []

    def start(app: App, args: list[str], env: dict[str, str] | None = None) -> Serve:
        process = Serve(app, args, env or {})
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def test_help_shows_every_flag_and_its_environment_variable() -> None:
    result = _run(["--help"], env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    # One block per option: the line naming it and its continuation lines.
    blocks = re.split(r"\n(?=  -)", result.stdout)
    documented = {}
    for block in blocks:
        flag = re.match(r"\s*(--[a-z-]+)", block)
        env = re.search(r"\[env ([A-Z_]+)\]", block)
        if flag and env:
            documented[flag.group(1)] = env.group(1)
    expected = {"--" + name.replace("_", "-"): variable for name, variable in ENVIRONMENT.items()}
    assert documented == expected
    for flag in ("--leader-ttl-ms", "--task-lease-ms", "--shutdown-timeout-ms",
                 "--concurrency", "--instance-id", "--mongodb-uri", "--data-dir"):
        assert flag in documented


def test_environment_variables_configure_the_runtime_and_flags_win(
        make_app: AppBuilder, serve: Any, mongodb_uri: str,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    env = {"MONGODB_URI": mongodb_uri, "REACTGEN_APP": app.package,
           "REACTGEN_DATABASE": db.name, "REACTGEN_INSTANCE_ID": "from-env",
           "REACTGEN_CONCURRENCY": "3", "REACTGEN_LEADER_TTL_MS": "4000",
           "REACTGEN_LOG_LEVEL": "debug", "TEST_INSTANCE": "from-env"}
    process = serve(app, [], env)
    process.wait_for_log(r"event=runtime\.started instance=from-env .*concurrency=3\b")
    process.wait_for_log(r"event=leader\.gained instance=from-env")
    lease = leader(db)
    assert lease is not None and lease["owner"] == "from-env"
    assert ms(lease["expiresAt"] - lease["renewedAt"]) == 4000
    assert "DEBUG" in process.log()
    db.things.insert_one({"_id": "a", "n": 1})
    wait_until(lambda: runs_of(db, "a"), timeout=15)
    assert process.stop() == 0

    # A flag beats its variable.
    process = serve(app, ["--concurrency", "5", "--instance-id", "from-flag"], env)
    process.wait_for_log(r"event=runtime\.started instance=from-flag .*concurrency=5\b")
    assert process.stop() == 0


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--concurrency", "many"], {}, ["--concurrency", "'many'"]),
    (["--concurrency", "0"], {}, ["--concurrency", "positive"]),
    (["--leader-ttl-ms", "-5"], {}, ["--leader-ttl-ms"]),
    (["--task-lease-ms", "1.5"], {}, ["--task-lease-ms"]),
    (["--task-lease-ms", "20"], {}, ["--task-lease-ms", "at least 100"]),
    (["--shutdown-timeout-ms", ""], {}, ["--shutdown-timeout-ms"]),
    (["--log-level", "loud"], {}, ["--log-level", "'loud'", "DEBUG"]),
    (["--instance-id", " "], {}, ["--instance-id"]),
    ([], {"REACTGEN_SHUTDOWN_TIMEOUT_MS": "soon"},
     ["REACTGEN_SHUTDOWN_TIMEOUT_MS", "--shutdown-timeout-ms", "'soon'"]),
    ([], {"REACTGEN_IDLE_POLL_MS": "-1"}, ["REACTGEN_IDLE_POLL_MS", "--idle-poll-ms"]),
])
def test_bad_values_give_a_clear_error_naming_the_flag(
        args: list[str], env: dict[str, str], named: list[str]) -> None:
    result = _run(["--app", "never_loaded", *args], env=env)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("runtime serve: error: "), result.stderr
    for text in named:
        assert text in result.stderr, result.stderr


def test_an_unusable_uri_is_a_clear_error(make_app: AppBuilder) -> None:
    app = build(make_app)
    result = _run(["--app", app.package, "--mongodb-uri", "http://localhost:1"], cwd=app.root)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "--mongodb-uri" in result.stderr and "MONGODB_URI" in result.stderr


def test_a_missing_app_package_is_a_clear_error(tmp_path: Path) -> None:
    result = _run(["--app", "no_such_app", "--mongodb-uri", "mongodb://127.0.0.1:1"],
                  cwd=tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert "no_such_app" in result.stderr and "reactgen build" in result.stderr
    assert "--app" in result.stderr


def _port_open(uri: str) -> bool:
    parts = urlsplit(uri)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 27017),
                                      timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.embedded_only
def test_without_a_uri_the_embedded_server_is_started_under_the_data_dir(
        make_app: AppBuilder, serve: Any, tmp_path: Path) -> None:
    app = build(make_app)
    data_dir = tmp_path / "data"
    process = serve(app, ["--app", app.package, "--data-dir", str(data_dir),
                          "--database", "shop", "--instance-id", "solo"],
                    {"TEST_INSTANCE": "solo"})
    uri = process.wait_for_log(r"event=embedded\.started uri=(mongodb://\S+)").group(1)
    process.wait_for_log(r"event=runtime\.started instance=solo")
    assert (data_dir / "db").is_dir()
    mongo: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        db = mongo["shop"]
        db.things.insert_one({"_id": "a", "n": 1})
        wait_until(lambda: runs_of(db, "a"), timeout=15)
    finally:
        mongo.close()
    assert process.stop() == 0
    assert not _port_open(uri), "the embedded server outlived runtime serve"
    # Its data stays in the data directory: a second start finds the task completed.
    process = serve(app, ["--app", app.package, "--data-dir", str(data_dir),
                          "--database", "shop", "--instance-id", "again"],
                    {"TEST_INSTANCE": "again"})
    uri = process.wait_for_log(r"event=embedded\.started uri=(mongodb://\S+)").group(1)
    process.wait_for_log(r"event=runtime\.started instance=again")
    mongo = MongoClient(uri)
    try:
        task = mongo["shop"].things_tasks.find_one({"sourceId": "a"})
        assert task is not None and task["status"] == "completed"
    finally:
        mongo.close()
    assert process.stop() == 0
