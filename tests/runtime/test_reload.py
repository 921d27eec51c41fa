"""``runtime serve --reload`` (issue 11): the development loop on a real process.

One supervisor runs through a session: a handler change restarts the runtime with the new code
while the embedded server keeps its data; a broken definition is reported and the old runtime
keeps running; the fix rebuilds and restarts; a handler that does not compile is reported by
file and line without a restart; SIGTERM stops everything with exit code 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AppBuilder
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from runtime_harness import REPO, App
from scenario import definition
from support import wait_until

from runtime.settings import ENVIRONMENT

MARKING_HANDLER = """
    from {package}.reactors.record import Context


    async def handle(ctx: Context) -> None:
        thing = await ctx.get_document()
        await ctx.database["marks"].insert_one(
            {"source": ctx.doc_id, "n": thing.n, "version": "VERSION"})
"""


def marking_handler(version: str) -> str:
    """The handler of ``record``: one ``marks`` document per run, tagged with ``version``."""
    return MARKING_HANDLER.replace("VERSION", version)


class Reloading:
    """A ``runtime serve --reload`` process; stdout and stderr in separate files."""

    def __init__(self, app: App, data_dir: Path) -> None:
        self.out_path = app.root / "reload.out"
        self.err_path = app.root / "reload.err"
        env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT.values()}
        env["PYTHONPATH"] = os.pathsep.join([str(app.root), str(REPO),
                                             os.environ.get("PYTHONPATH", "")])
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runtime", "serve", "--app", app.package, "--reload",
                 "--schemas", "defs", "--data-dir", str(data_dir), "--log-level", "INFO",
                 "--shutdown-timeout-ms", "5000"],
                cwd=app.root, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def first_line(self) -> str:
        def line() -> str | None:
            assert self.process.poll() is None, f"exited early:\n{self.stderr()[-3000:]}"
            text = self.out_path.read_text(encoding="utf-8")
            return text.split("\n", 1)[0] if "\n" in text else None
        return wait_until(line, timeout=30, message="the URI on stdout")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.stderr()))

    def wait_for(self, pattern: str, times: int = 1, timeout: float = 30) -> None:
        """Until ``pattern`` appeared ``times`` times in the log."""
        def seen() -> bool:
            assert self.process.poll() is None, f"exited early:\n{self.stderr()[-3000:]}"
            return self.count(pattern) >= times
        try:
            wait_until(seen, timeout=timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"{pattern!r} x{times} not logged:\n"
                                 f"{self.stderr()[-4000:]}") from None


@pytest.fixture
def reloading(tmp_path: Path) -> Iterator[Any]:
    started: list[Reloading] = []

    def begin(app: App) -> Reloading:
        started.append(Reloading(app, tmp_path / "data"))
        return started[-1]

    yield begin
    for each in started:
        if each.process.poll() is None:
            each.process.kill()
            each.process.wait()


def _write(path: Path, text: str) -> None:
    """Replace a file so that its modification time surely differs from the last one."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    if path.stat().st_mtime_ns == before:  # a coarse file system clock
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


@pytest.mark.embedded_only
def test_reload_rebuilds_restarts_and_keeps_the_database(
        make_app: AppBuilder, reloading: Any) -> None:
    app = make_app({"record": definition()}, {"record": marking_handler("v1")})
    serving = reloading(app)
    uri = serving.first_line()
    started = r"runtime started \(pid \d+\)"
    serving.wait_for(r"event=runtime\.started")
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    db = client["app"]

    def mark(source: str) -> dict[str, Any] | None:
        return db.marks.find_one({"source": source})

    try:
        db.things.insert_one({"_id": "a", "n": 1})
        assert wait_until(lambda: mark("a"), timeout=20)["version"] == "v1"

        # A handler change: restarted with the new code; the data is still there.
        _write(app.handler_path("record"), textwrap.dedent(marking_handler("v2")).replace(
            "{package}", app.package))
        serving.wait_for(rf"{app.package}/handlers/record\.py changed, restarting")
        serving.wait_for(r"event=runtime\.started", times=2)
        db.things.insert_one({"_id": "b", "n": 1})
        assert wait_until(lambda: mark("b"), timeout=20)["version"] == "v2"
        assert mark("a") is not None and db.things.count_documents({}) == 2
        restarts = serving.count(started)

        # A broken definition: the problem is printed, the old runtime keeps running.
        path = app.root / "defs" / "record.reactor.yaml"
        good = path.read_text(encoding="utf-8")
        _write(path, good.replace("watch: [n]", "filter: {n: {$gtt: 0}}\n  watch: [n]"))
        serving.wait_for(r"definitions changed \(defs/record\.reactor\.yaml\): the build has "
                         r"problems \(above\); keeping the running runtime")
        assert "defs/record.reactor.yaml:" in serving.stderr()
        assert "$gtt" in serving.stderr()
        db.things.insert_one({"_id": "c", "n": 1})
        assert wait_until(lambda: mark("c"), timeout=20)["version"] == "v2"
        assert serving.count(started) == restarts

        # The fix: rebuilt and restarted (the filter now leaves n = 0 out).
        _write(path, good.replace("watch: [n]", "filter: {n: {$gt: 0}}\n  watch: [n]"))
        serving.wait_for(r"definitions changed \(defs/record\.reactor\.yaml\): rebuilt "
                         rf"{app.package}/ \(\d+ file\(s\)\), restarting")
        serving.wait_for(r"event=runtime\.started", times=3)
        assert serving.count(started) == restarts + 1
        db.things.insert_many([{"_id": "zero", "n": 0}, {"_id": "d", "n": 2}])
        assert wait_until(lambda: mark("d"), timeout=20)["version"] == "v2"
        assert mark("zero") is None

        # A handler that does not compile: reported by file and line, no restart.
        _write(app.handler_path("record"), "async def handle(ctx)\n    pass\n")
        serving.wait_for(rf"{app.package}/handlers/record\.py:1: handler module does not "
                         r"compile: expected ':'.*keeping the running runtime")
        db.things.insert_one({"_id": "e", "n": 3})
        assert wait_until(lambda: mark("e"), timeout=20)["version"] == "v2"
        assert serving.count(started) == restarts + 1
    finally:
        client.close()

    # SIGTERM: the runtime and the embedded server stop, exit code 0.
    serving.process.send_signal(signal.SIGTERM)
    assert serving.process.wait(30) == 0, serving.stderr()[-3000:]
    assert "event=reload.stopped" in serving.stderr()
    began = time.monotonic()
    probe: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=300)
    with pytest.raises(PyMongoError):
        probe.admin.command("ping")
    probe.close()
    assert time.monotonic() - began < 10


def _serve(*args: str, cwd: Path, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT.values()}
    environment["PYTHONPATH"] = os.pathsep.join([str(cwd), str(REPO)])
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "runtime", "serve", *args], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_reload_usage_errors_name_the_flag(make_app: AppBuilder, tmp_path: Path) -> None:
    app = make_app({"record": definition()}, {"record": marking_handler("v1")})
    result = _serve("--app", app.package, "--reload", "--schemas", "nowhere", cwd=app.root)
    assert result.returncode == 2, result
    assert result.stderr.strip() == ("runtime serve: error: --schemas nowhere: no such folder; "
                                     "pass the folder with your *.reactor.yaml files")
    result = _serve("--app", app.package, cwd=app.root, env={"REACTGEN_RELOAD": "maybe"})
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        "runtime serve: error: REACTGEN_RELOAD (environment, for --reload) must be one of 1, "
        "true, yes, on, 0, false, no, off, got 'maybe'")
    result = _serve("--app", "./elsewhere", "--reload", cwd=app.root)
    assert result.returncode == 2, result
    assert result.stderr.startswith("runtime serve: error: --reload: cannot find the app "
                                    "package folder of --app ./elsewhere"), result.stderr
    assert not (app.root / ".reactgen" / "db").exists(), "the embedded server was started"


def test_the_runtime_gets_the_flags_but_not_the_supervisors() -> None:
    from runtime.cli import build_parser
    from runtime.reload import child_command
    from runtime.serve_cli import FLAGS

    args = build_parser().parse_args(
        ["serve", "--app", "./generated", "--reload", "--schemas", "defs", "--db-port", "0",
         "--data-dir", "d", "--concurrency", "3", "--log-level", "debug"])
    command = child_command(args, FLAGS, "mongodb://127.0.0.1:5/")
    assert command[1:] == ["-m", "runtime", "serve", "--app", "./generated", "--concurrency",
                           "3", "--log-level", "debug", "--mongodb-uri",
                           "mongodb://127.0.0.1:5/"]
