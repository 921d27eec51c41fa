"""Scale (issue 9 item 8) through a real ``runtime serve``: with many finished task documents
in the tasks collection, claims stay index-served (keys examined per task do not depend on
them) and the runtime's memory stays flat.

50,000 finished tasks here (the million of ``bench/scale.py`` takes minutes and gigabytes,
too much for every test run); a claim that scanned them would examine 50,000 keys, so the
bound below tells the two apart by four orders of magnitude.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from reactive_support import definition
from support import wait_until

Db = Database[dict[str, Any]]
FINISHED = 50_000
NEW = 300

RECORD = '''
async def handle(ctx):
    await ctx.database["runs"].insert_one({"source": ctx.doc_id})
'''


def _keys_examined(db: Db) -> int:
    status = db.client.admin.command("serverStatus")
    return int(status["metrics"]["queryExecutor"]["scanned"])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_claims_stay_index_served_and_memory_flat_with_many_finished_tasks(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = make_app({"noop": definition(watch=["n"])}, {"noop": RECORD})
    runtime = start_runtime(app, args=["--concurrency", "10"])
    db.things.insert_one({"_id": "warm-up", "n": 1})
    wait_until(lambda: db.runs.estimated_document_count() == 1)
    rss_before = _rss_mib(runtime.process.pid)
    # Months of finished work: terminal tasks (nextRunAt null) whose sources are gone.
    done = datetime.datetime(2030, 1, 1)
    for start in range(0, FINISHED, 10_000):
        db.things_tasks.insert_many(
            [{"reactor": "noop", "sourceId": f"old{i}", "status": "completed", "nextRunAt": None,
              "attempts": 1, "snapshot": {"n": 1}, "snapshotHash": "x", "completedAt": done,
              "history": [{"at": done, "status": "completed", "attempt": 1, "by": "a"}]}
             for i in range(start, start + 10_000)], ordered=False)
    before = _keys_examined(db)
    db.things.insert_many([{"_id": f"new{i}", "n": 1} for i in range(NEW)])
    # Polled on the handlers' own records, not on the tasks collection: the test's queries
    # must not count among the keys examined.
    wait_until(lambda: db.runs.estimated_document_count() == NEW + 1, timeout=60)
    per_task = (_keys_examined(db) - before) / NEW
    # Every query of the runtime counts (planner upserts, claims, finalizes, wake-up
    # lookups): about four keys per task, none of them among the finished tasks.
    assert per_task < 10, per_task
    rss_after = _rss_mib(runtime.process.pid)
    assert rss_after < 150 and rss_after - rss_before < 30, (rss_before, rss_after)
