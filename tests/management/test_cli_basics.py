"""The management commands' common behaviour: required URI, exit codes, environment twins,
``--version``."""

from __future__ import annotations

import socket
import subprocess
import sys
from importlib import metadata

from conftest import AppBuilder
from management_support import Doc, json_lines, run_cli, task_doc
from pymongo.database import Database
from runtime_harness import REPO
from scenario import build

from runtime.management.cli import ExitCode


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_exit_codes(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    app = build(make_app)
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4]
    no_uri = run_cli(["tasks", "count"], app)
    assert no_uri.returncode == ExitCode.USAGE
    assert "--mongodb-uri (or MONGODB_URI) is required" in no_uri.stderr
    assert "never starts the embedded server" in no_uri.stderr
    unreachable = run_cli(["instances", "--timeout-ms", "300"], None,
                          f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true")
    assert unreachable.returncode == ExitCode.CANNOT_CONNECT, unreachable.stderr
    assert "cannot reach MongoDB" in unreachable.stderr
    bad_uri = run_cli(["instances"], None, "http://nowhere")
    assert bad_uri.returncode == ExitCode.USAGE and "is not usable" in bad_uri.stderr
    no_app = run_cli(["reactors", "--app", "no_such_package"], None, mongodb_uri, db.name)
    assert no_app.returncode == ExitCode.FAILURE and "no_such_package" in no_app.stderr
    assert run_cli(["reactors", "nope"], app, mongodb_uri, db.name).returncode == (
        ExitCode.NOT_FOUND)
    bad_status = run_cli(["tasks", "list", "--status", "broken"], app, mongodb_uri, db.name)
    assert bad_status.returncode == ExitCode.USAGE
    assert "unknown task status 'broken'" in bad_status.stderr
    bad_filter = run_cli(["tasks", "count", "--source-filter", "[1]"], app, mongodb_uri,
                         db.name)
    assert bad_filter.returncode == ExitCode.USAGE and "JSON object" in bad_filter.stderr
    bad_timeout = run_cli(["instances"], None, mongodb_uri, env={"REACTGEN_TIMEOUT_MS": "x"})
    assert bad_timeout.returncode == ExitCode.USAGE
    assert "REACTGEN_TIMEOUT_MS (environment, for --timeout-ms) must be a positive " \
           "integer" in bad_timeout.stderr
    assert run_cli(["tasks", "retry"], app, mongodb_uri, db.name).returncode == ExitCode.USAGE
    assert run_cli(["reset-stream"], None, mongodb_uri, db.name).returncode == (
        ExitCode.NOT_FOUND)


def test_environment_twins(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    app = build(make_app)
    db.things_tasks.insert_many([task_doc("a", "failed"), task_doc("b", "pending")])
    result = run_cli(["tasks", "count", "--json", "--status", "failed"], env={
        "REACTGEN_APP": app.package, "MONGODB_URI": mongodb_uri,
        "REACTGEN_DATABASE": db.name}, cwd=app.root)
    assert json_lines(result) == [{"count": 1}]
    # a flag wins over its variable
    other = run_cli(["tasks", "count", "--database", "elsewhere"], env={
        "REACTGEN_APP": app.package, "MONGODB_URI": mongodb_uri,
        "REACTGEN_DATABASE": db.name}, cwd=app.root)
    assert other.returncode == 0 and other.stdout.strip() == "0"


def test_version() -> None:
    version = metadata.version("reactgen")
    runtime = run_cli(["--version"])
    assert (runtime.returncode, runtime.stdout.strip()) == (0, f"runtime {version}")
    reactgen = subprocess.run([sys.executable, "-m", "generator", "--version"],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (reactgen.returncode, reactgen.stdout.strip()) == (0, f"reactgen {version}")


def test_help_lists_every_command() -> None:
    result = run_cli(["--help"])
    for command in ("tasks", "reactors", "explain", "reconcile", "instances", "pause",
                    "resume", "reset-stream", "serve", "db"):
        assert command in result.stdout
    text = " ".join(run_cli(["tasks", "retry", "--help"]).stdout.split())
    assert "[env MONGODB_URI]" in text and "[env REACTGEN_TIMEOUT_MS]" in text
    assert "--all" in text and "exit codes: 0 ok, 1 failure, 2 usage, 3 not found" in text
