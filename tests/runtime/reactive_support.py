"""Helpers for the end-to-end tests of planning, policies and the task context.

Handlers report to the test through the database only:

- ``runs``: one document per handler execution that got past ``get_document()``;
- ``gates``: a handler that must wait for the test polls for ``{_id: <gate>}`` (the test opens
  the gate with :func:`open_gate`) and announces that it is waiting in ``waiting``.

Times asserted by the tests are always the server's (``$$NOW`` written by the runtime, or
``hello.localTime``), never the test process's clock.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from pymongo.collection import Collection
from pymongo.database import Database
from support import wait_until

Doc = dict[str, Any]

CLOCK_TOLERANCE_MS = 50
"""Workers decide that a task is due with their estimate of the server's clock (the claim's
``nextRunAt <= now``), so an execution may start this much before its ``nextRunAt``."""

SCHEMA: Doc = {
    "type": "object",
    "title": "Thing",
    "properties": {
        "_id": {"type": "string"},
        "kind": {"type": "string"},
        "n": {"type": "integer"},
        "label": {"type": "string"},
        "note": {"type": "string"},
    },
}

# Code shared by handlers (pasted at the top of a handler module).
GATE_CODE = '''
import asyncio


async def wait_gate(ctx, gate: str) -> None:
    """Announce that this execution waits for ``gate``, then wait until the test opens it."""
    await ctx.database["waiting"].update_one({"_id": gate}, {"$inc": {"count": 1}},
                                             upsert=True)
    while await ctx.database["gates"].find_one({"_id": gate}) is None:
        await asyncio.sleep(0.01)


async def record(ctx, **fields) -> None:
    """One ``runs`` document per execution."""
    await ctx.database["runs"].insert_one({"source": ctx.doc_id, "attempt": ctx.attempt,
                                           **fields})
'''


def definition(collection: str = "things", *, schema: Doc | None = None,
               filter: Doc | None = None, watch: Any = None, policies: Doc | None = None,
               name: str | None = None) -> str:
    """A reactor definition (YAML) on ``collection`` with the test schema."""
    data: Doc = {"collection": collection, "schema": schema or SCHEMA}
    if name is not None:
        data["name"] = name
    trigger: Doc = {}
    if filter is not None:
        trigger["filter"] = filter
    if watch is not None:
        trigger["watch"] = watch
    if trigger:
        data["trigger"] = trigger
    if policies:
        data["policies"] = policies
    return yaml.safe_dump(data, sort_keys=False)


def open_gate(db: Database[Doc], gate: str) -> None:
    """Let the handler waiting on ``gate`` continue."""
    db.gates.update_one({"_id": gate}, {"$set": {"open": True}}, upsert=True)


def wait_waiting(db: Database[Doc], gate: str, count: int = 1, timeout: float = 20) -> None:
    """Until ``count`` executions have announced that they wait for ``gate``."""
    wait_until(lambda: (db.waiting.find_one({"_id": gate}) or {}).get("count", 0) >= count,
               timeout=timeout, message=f"a handler waiting for gate {gate!r}")


def task_of(db: Database[Doc], source: Any, tasks: str = "things_tasks") -> Doc | None:
    """The task document of one source document (one reactor per collection in these tests)."""
    return db[tasks].find_one({"sourceId": source})


def wait_task(db: Database[Doc], source: Any, timeout: float = 20, tasks: str = "things_tasks",
              **expected: Any) -> Doc:
    """Until the task of ``source`` has every ``expected`` field value; returns it."""

    def check() -> Doc | None:
        task = task_of(db, source, tasks)
        if task is not None and all(task.get(k) == v for k, v in expected.items()):
            return task
        return None

    check.__name__ = f"task of {source!r} with {expected}"
    return wait_until(check, timeout=timeout)


def server_now(db: Database[Doc]) -> datetime.datetime:
    """The database server's clock."""
    value = db.client.admin.command("hello")["localTime"]
    assert isinstance(value, datetime.datetime)
    return value.replace(tzinfo=None)


def ms(delta: datetime.timedelta) -> float:
    """A time difference in milliseconds."""
    return delta.total_seconds() * 1000


@dataclass
class TaskWrites:
    """Every write to a tasks collection, read from a change stream opened before the test
    acts. ``updates`` holds ``(document key, updatedFields, removedFields)`` in commit order."""

    collection: Collection[Doc]
    inserts: list[Doc] = field(default_factory=list)
    updates: list[tuple[Any, Doc, list[str]]] = field(default_factory=list)
    deletes: list[Any] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, stream: Any) -> None:
        with stream:
            while not self._stop.is_set():
                event = stream.try_next()
                if event is None:
                    continue
                with self._lock:
                    op = event["operationType"]
                    key = event["documentKey"]["_id"]
                    if op == "insert":
                        self.inserts.append(event["fullDocument"])
                    elif op == "update":
                        description = event["updateDescription"]
                        self.updates.append((key, description.get("updatedFields", {}),
                                             description.get("removedFields", [])))
                    elif op == "delete":
                        self.deletes.append(key)
                    else:
                        self.updates.append((key, {"$op": op}, []))

    def updates_of(self, task_id: Any) -> list[Doc]:
        """The ``updatedFields`` of every update of one task, in order."""
        with self._lock:
            return [fields for key, fields, _ in self.updates if key == task_id]

    def finalizations(self, task_id: Any) -> list[Doc]:
        """The updates of one task that recorded the end of an execution."""
        return [u for u in self.updates_of(task_id) if "lastFinalizedAt" in u]


@contextmanager
def watch_task_writes(db: Database[Doc], tasks: str = "things_tasks") -> Iterator[TaskWrites]:
    """Record every write to ``tasks`` (the stream is open when the block starts)."""
    stream = db[tasks].watch(max_await_time_ms=50)
    writes = TaskWrites(db[tasks])
    thread = threading.Thread(target=writes._run, args=(stream,), daemon=True)
    thread.start()
    try:
        yield writes
    finally:
        writes._stop.set()
        thread.join(timeout=5)


def planned_up_to(db: Database[Doc], marker: str, collection: str = "things",
                  tasks: str = "things_tasks", **fields: Any) -> Doc:
    """Write a fresh marker document and wait until its task exists: the planner has then
    planned every change committed before it (it plans the change stream in order)."""
    db[collection].insert_one({"_id": marker, **fields})
    return wait_until(lambda: db[tasks].find_one({"sourceId": marker}), timeout=20,
                      message=f"task of marker {marker!r}")
