"""Poison documents: a source document whose trigger cannot be evaluated is recorded as a
failed task (with the error, counted in metrics) and everything else goes on being planned."""

from __future__ import annotations

import re
import socket
import urllib.request
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from scenario import build_many, runs_of, start, task_of
from support import wait_until

Doc = dict[str, Any]
COUNT_ITEMS = '    trigger:\n      watch: {count: {$size: "$items"}}\n'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_poison_document_is_a_failed_task_and_the_rest_is_planned(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build_many(make_app, {"record": (COUNT_ITEMS, ""), "plain": ("", "")})
    port = _free_port()
    # One batch, written before the runtime starts so that its first-start scan (not a race
    # between the scan and the stream) plans it: $size of a number fails on the server for
    # "bad" only, and only for the reactor whose watched value computes it.
    db.things.insert_many([{"_id": "ok1", "n": 1, "items": [1, 2]},
                           {"_id": "bad", "n": 2, "items": 5},
                           {"_id": "ok2", "n": 3, "items": []}])
    a = start(start_runtime, app, "a", "--metrics-port", str(port))
    wait_until(lambda: runs_of(db, "ok1") and runs_of(db, "ok2"), timeout=15)
    poisoned = wait_until(lambda: db.things_tasks.find_one({"sourceId": "bad",
                                                            "reactor": "record"}))
    assert poisoned["status"] == "failed" and poisoned["nextRunAt"] is None
    assert poisoned["lastError"].startswith("planning failed: ")
    assert "$size" in poisoned["planningError"]["error"]
    a.wait_for_log(r"event=planner\.poison_document reactor=record .*source_id=bad")
    # The other reactor plans the same document normally (its handler then fails the
    # document model's validation, an ordinary task failure).
    wait_until(lambda: (db.things_tasks.find_one({"sourceId": "bad", "reactor": "plain"})
                        or {}).get("attempts", 0) >= 1)
    assert not [r for r in runs_of(db, "bad") if r["reactor"] == "record"]

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    metrics = scrape()
    # Once per planning of the document (the first-start scan and the stream may both).
    failures = re.search(r'^reactgen_planning_failures_total\{reactor="record"\} (\S+)$',
                         metrics, re.MULTILINE)
    assert failures is not None and float(failures.group(1)) >= 1
    # The first-start scan's progress is exported too.
    assert f'reactgen_scan_documents_total{{collection="things",database="{db.name}"}} 3.0' \
        in metrics
    # Fixed, the document plans cleanly: the task is pending again and runs.
    db.things.update_one({"_id": "bad"}, {"$set": {"items": [7]}})
    wait_until(lambda: [r for r in runs_of(db, "bad") if r["reactor"] == "record"],
               timeout=15)
    fixed = wait_until(lambda: (task_of(db, "bad") or {}) and db.things_tasks.find_one(
        {"sourceId": "bad", "reactor": "record", "status": "completed"}))
    assert "planningError" not in fixed and fixed["lastError"] is None
