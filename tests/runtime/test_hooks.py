"""Hooks through the Python API: a script builds ``Runtime(settings, load_app(pkg), Hooks(...))``
and runs it as its own process, the way an application embeds the runtime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AppBuilder
from pymongo.database import Database
from reactive_support import GATE_CODE, definition, planned_up_to, wait_task
from runtime_harness import REPO, App
from support import wait_until

Db = Database[dict[str, Any]]

EMBEDDING_SCRIPT = '''
"""Runs the application with hooks until SIGTERM (argv: package, MongoDB URI, database)."""

import asyncio
import signal
import sys

from runtime.app_loader import load_app
from runtime.hooks import Hooks
from runtime.serve import Runtime
from runtime.settings import RuntimeSettings
from runtime.structured_logging import configure


def task_filter(reactor):
    return reactor.name != "excluded"


async def execution_wrapper(reactor, ctx, call_next):
    wrapped = ctx.database["wrapped"]
    await wrapped.insert_one({"reactor": reactor.name, "source": ctx.doc_id, "phase": "before",
                              "attempt": ctx.attempt})
    try:
        await call_next()
    except Exception as exc:
        await wrapped.insert_one({"reactor": reactor.name, "source": ctx.doc_id,
                                  "phase": "error", "error": str(exc)})
        raise
    await wrapped.insert_one({"reactor": reactor.name, "source": ctx.doc_id, "phase": "after"})


async def main() -> None:
    package, uri, database = sys.argv[1:4]
    configure("DEBUG")
    settings = RuntimeSettings(app=package, mongodb_uri=uri, database=database,
                               instance_id="hooked")
    runtime = Runtime(settings, load_app(package),
                      Hooks(task_filter=task_filter, execution_wrapper=execution_wrapper))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await runtime.start()
        await stop.wait()
    finally:
        await runtime.shutdown()


asyncio.run(main())
'''

HANDLER = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    if thing.label == "fail":
        raise RuntimeError("handler failed")
    await record(ctx, n=thing.n)
'''

ScriptRunner = Callable[[App, str, list[str]], Path]


@pytest.fixture
def run_script() -> Iterator[ScriptRunner]:
    """``run_script(app, source, args)``: run a Python script in the app's folder; returns its
    log path. Every script is stopped with SIGTERM after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def run(app: App, source: str, args: list[str]) -> Path:
        script = app.root / "embed.py"
        script.write_text(textwrap.dedent(source), encoding="utf-8")
        log_path = app.root / "embed.log"
        env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
        env["PYTHONPATH"] = os.pathsep.join([str(app.root), str(REPO)])
        with log_path.open("ab") as log:
            processes.append(subprocess.Popen([sys.executable, str(script), *args],
                                              cwd=app.root, env=env, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=log))
        return log_path

    try:
        yield run
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            try:
                assert process.wait(30) == 0, "the embedding script did not stop cleanly"
            finally:
                if process.poll() is None:
                    process.kill()


def test_task_filter_and_execution_wrapper(make_app: AppBuilder, run_script: ScriptRunner,
                                           db: Db, mongodb_uri: str) -> None:
    app = make_app({"included": definition(watch=["n", "label"],
                                           policies={"retry": {"maxAttempts": 1}}),
                    "excluded": definition(collection="others", watch=["n"])},
                   {"included": HANDLER, "excluded": HANDLER})
    log_path = run_script(app, EMBEDDING_SCRIPT, [app.package, mongodb_uri, db.name])
    wait_until(lambda: "event=runtime.started" in log_path.read_text(errors="replace"),
               timeout=20, message="runtime started by the embedding script")
    db.others.insert_one({"_id": "y", "n": 1})
    db.things.insert_one({"_id": "x", "n": 1})
    db.things.insert_one({"_id": "f", "n": 1, "label": "fail"})

    wait_task(db, "x", status="completed")
    assert [(w["phase"], w["attempt"] if w["phase"] == "before" else None)
            for w in db.wrapped.find({"source": "x"}).sort("_id", 1)] == [
        ("before", 1), ("after", None)]
    failed = wait_task(db, "f", status="failed")
    assert failed["lastError"] == "RuntimeError: handler failed"
    assert [w["phase"] for w in db.wrapped.find({"source": "f"}).sort("_id", 1)] == [
        "before", "error"]
    error = db.wrapped.find_one({"source": "f", "phase": "error"})
    assert error is not None and error["error"] == "handler failed"

    # The excluded reactor is planned (this instance leads) but never executed here.
    planned_up_to(db, "marker", n=0)
    wait_task(db, "marker", status="completed")
    excluded = wait_task(db, "y", tasks="others_tasks")
    assert excluded["status"] == "pending" and excluded["attempts"] == 0
    assert excluded.get("lease") is None and "startedAt" not in excluded
    assert db.wrapped.count_documents({"reactor": "excluded"}) == 0
    assert db.runs.count_documents({"source": "y"}) == 0


HOOKS_MODULE = '''
"""Hooks loaded by `runtime serve --hooks app_hooks:HOOKS`."""

from runtime.hooks import Hooks


async def execution_wrapper(reactor, ctx, call_next):
    await ctx.database["wrapped"].insert_one({"source": ctx.doc_id, "phase": "before"})
    await call_next()
    await ctx.database["wrapped"].insert_one({"source": ctx.doc_id, "phase": "after"})


HOOKS = Hooks(task_filter=lambda reactor: reactor.name != "excluded",
              execution_wrapper=execution_wrapper)
'''


def test_hooks_option_of_runtime_serve(make_app: AppBuilder, start_runtime: Any,
                                       db: Db) -> None:
    app = make_app({"included": definition(watch=["n"]),
                    "excluded": definition(collection="others", watch=["n"])},
                   {"included": HANDLER, "excluded": HANDLER})
    (app.root / "app_hooks.py").write_text(textwrap.dedent(HOOKS_MODULE), encoding="utf-8")
    start_runtime(app, args=["--hooks", "app_hooks:HOOKS"])
    db.others.insert_one({"_id": "y", "n": 1})
    db.things.insert_one({"_id": "x", "n": 1})
    wait_task(db, "x", status="completed")
    assert [w["phase"] for w in db.wrapped.find({"source": "x"}).sort("_id", 1)] == [
        "before", "after"]
    planned_up_to(db, "marker", n=0)
    wait_task(db, "marker", status="completed")
    assert wait_task(db, "y", tasks="others_tasks")["status"] == "pending"


def test_bad_hooks_option_is_a_clear_error(make_app: AppBuilder, start_runtime: Any) -> None:
    app = make_app({"included": definition(watch=["n"])}, {"included": HANDLER})
    process = start_runtime(app, args=["--hooks", "no_such_module:HOOKS"], wait=False)
    assert process.process is not None
    assert process.process.wait(30) == 1
    assert "--hooks: cannot import no_such_module" in process.log()
