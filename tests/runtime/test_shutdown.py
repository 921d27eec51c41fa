"""Graceful stop (SIGTERM): stop claiming, hand leadership over, let running handlers finish
within ``--shutdown-timeout-ms``, give unfinished tasks back, exit 0."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from runtime_harness import RuntimeProcess
from scenario import (
    build,
    count,
    definition,
    leader,
    release,
    runs_of,
    server_now,
    start,
    stays,
    task_of,
)
from support import ServerFactory, wait_until

EPOCH_YEAR = 1970


def _exit_code(process: RuntimeProcess, timeout: float) -> int:
    assert process.process is not None
    try:
        return process.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{process.instance_id} did not exit within {timeout}s:\n"
                             f"{process.log()[-3000:]}") from None


def test_running_handlers_finish_and_nothing_new_is_claimed(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    debounce_ms = 1500
    app = build(make_app, policies=f"      debounce: {debounce_ms}ms\n")
    a = start(start_runtime, app, "a", "--shutdown-timeout-ms", "60000", "--concurrency", "2")
    db.things.insert_one({"_id": "running", "n": 1, "block": True})
    wait_until(lambda: runs_of(db, "running"), timeout=15)
    db.things.insert_one({"_id": "waiting", "n": 1})
    waiting = wait_until(lambda: task_of(db, "waiting"))
    assert waiting["status"] == "pending"

    a.signal(signal.SIGTERM)
    a.wait_for_log(r"event=runtime\.stopping")
    # Leadership is handed over first, while the handler still runs.
    a.wait_for_log(r"event=leader\.released instance=a")
    lease = leader(db)
    assert lease is not None and lease["expiresAt"].year == EPOCH_YEAR
    # "waiting" becomes due during the drain; the stopping instance, with a free worker,
    # must not claim it.
    wait_until(lambda: server_now(db) > waiting["nextRunAt"], timeout=debounce_ms / 1000 + 5)
    stays(lambda: (task_of(db, "waiting") or {}).get("status") == "pending"
          and a.process is not None and a.process.poll() is None, 1.0,
          "the stopping instance claimed new work (or exited before its handler finished)")

    release(db, "running")
    assert _exit_code(a, 30) == 0
    finished = task_of(db, "running")
    assert finished is not None and finished["status"] == "completed"
    assert finished["attempts"] == 1
    assert "finishedAt" in runs_of(db, "running")[0]
    untouched = task_of(db, "waiting")
    assert untouched is not None
    assert untouched["status"] == "pending" and untouched["attempts"] == 0
    assert runs_of(db, "waiting") == []
    assert count(a, r"event=task\.(released|abandoned)") == 0
    a.wait_for_log(r"event=runtime\.stopped")


def test_unfinished_handlers_are_released_after_the_shutdown_timeout(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    timeout_ms = 1500
    app = build(make_app)
    a = start(start_runtime, app, "a", "--shutdown-timeout-ms", str(timeout_ms))
    db.things.insert_one({"_id": "stuck", "n": 1, "block": True})
    wait_until(lambda: runs_of(db, "stuck"), timeout=15)
    held = task_of(db, "stuck")
    assert held is not None and held["status"] == "processing" and held["attempts"] == 1

    sent = time.monotonic()
    a.signal(signal.SIGTERM)
    assert _exit_code(a, timeout_ms / 1000 + 20) == 0
    elapsed = time.monotonic() - sent
    assert elapsed >= timeout_ms / 1000, f"exited after {elapsed:.2f}s, before the timeout"
    a.wait_for_log(r"event=task\.released .*source_id=stuck")
    released = task_of(db, "stuck")
    assert released is not None
    assert released["status"] == "pending"
    assert released["attempts"] == 0, "the interrupted attempt was counted"
    assert released["lease"] is None
    assert released["nextRunAt"] <= server_now(db)
    assert "finishedAt" not in runs_of(db, "stuck")[0]
    lease = leader(db)
    assert lease is not None and lease["expiresAt"].year == EPOCH_YEAR

    # The released task runs again elsewhere, as the same (first) attempt.
    start(start_runtime, app, "b")
    wait_until(lambda: len(runs_of(db, "stuck")) == 2, timeout=15)
    assert [(r["instance"], r["attempt"]) for r in runs_of(db, "stuck")] == [("a", 1), ("b", 1)]
    release(db, "stuck")
    wait_until(lambda: (task_of(db, "stuck") or {}).get("status") == "completed")


STUCK_SYNC_HANDLER = """
    import os
    import time

    from {package}.reactors.record import Context


    def handle(ctx: Context) -> None:
        thing = ctx.get_document_sync()
        ctx.database  # the handler's own work would go here
        marker = os.path.join(os.getcwd(), f"started-{thing.id}")
        open(marker, "w").close()
        while True:  # a plain-function handler that never returns (and cannot be cancelled)
            time.sleep(0.05)
"""


def test_a_stuck_plain_function_handler_does_not_keep_the_process_alive(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    timeout_ms = 1000
    app = make_app({"record": definition()}, {"record": STUCK_SYNC_HANDLER})
    a = start(start_runtime, app, "a", "--shutdown-timeout-ms", str(timeout_ms))
    db.things.insert_one({"_id": "stuck", "n": 1})
    wait_until(lambda: (app.root / "started-stuck").exists(), timeout=15)
    sent = time.monotonic()
    a.signal(signal.SIGTERM)
    assert _exit_code(a, timeout_ms / 1000 + 20) == 0
    assert time.monotonic() - sent >= timeout_ms / 1000
    a.wait_for_log(r"event=task\.released .*source_id=stuck")
    released = task_of(db, "stuck")
    assert released is not None and released["status"] == "pending"
    assert released["attempts"] == 0


def test_a_stop_while_the_database_is_gone_is_bounded(
        make_app: AppBuilder, fresh_server: ServerFactory) -> None:
    # Every step of the stop is bounded: with the server gone (each command would otherwise
    # wait for server selection), SIGTERM still ends the process promptly and cleanly.
    server = fresh_server(in_memory=True)
    app = build(make_app)
    process = RuntimeProcess(app, server.uri, "gone", "a", ["--leader-ttl-ms", "2000"],
                             {"TEST_INSTANCE": "a"})
    process.start()
    try:
        process.wait_started()
        process.wait_for_log(r"event=leader\.gained")
        server.kill()
        process.wait_for_log(r"event=leader\.(error|lost)|event=wakeup\.error", timeout=30)
        sent = time.monotonic()
        process.signal(signal.SIGTERM)
        assert _exit_code(process, 30) == 0
        assert time.monotonic() - sent < 15, "stopping took too long"
    finally:
        process.kill()
