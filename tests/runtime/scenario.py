"""Building blocks of the end-to-end runtime scenarios (leases, leadership, shutdown, resume).

One reactor, ``record``, on a ``things`` collection. Its handler reports to the test through the
database only:

* it inserts one ``runs`` document per execution: ``{source, n, instance, attempt, startedAt,
  localTime}``, where ``startedAt`` is the *server's* time (``$currentDate``) and ``localTime``
  the runtime process's own clock (different under libfaketime);
* a source with ``block: true`` then waits until the test inserts ``control`` document
  ``release:<source id>`` (or ``release:all``);
* a source with ``hold_ms`` keeps the handler busy that long;
* at the end it sets ``finishedAt`` (server time) on its ``runs`` document.

``instance`` comes from the ``TEST_INSTANCE`` variable that :func:`start` passes to the process.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure
from runtime_harness import App, RuntimeProcess

Doc = dict[str, Any]

SCHEMA_HEAD = """
    collection: things
    schema:
      type: object
      title: Thing
      properties:
        _id: {type: string}
        n: {type: integer}
        block: {type: boolean}
        hold_ms: {type: integer}
        note: {type: string}
        dueAt: {type: string, format: date-time}
        items: {type: array, items: {type: integer}}
"""
WATCH_N = "    trigger:\n      watch: [n]\n"
SCHEMA = SCHEMA_HEAD + WATCH_N

HANDLER = """
    import asyncio
    import datetime
    import os

    from bson import ObjectId

    from {package}.reactors.record import Context


    async def handle(ctx: Context) -> None:
        thing = await ctx.get_document()
        runs = ctx.database["runs"]
        run_id = ObjectId()
        await runs.update_one(
            {"_id": run_id},
            {"$set": {"source": thing.id, "n": thing.n, "attempt": ctx.attempt,
                      "reactor": "REACTOR_NAME",
                      "instance": os.environ.get("TEST_INSTANCE", "?"),
                      "localTime": datetime.datetime.now(datetime.UTC).replace(tzinfo=None)},
             "$currentDate": {"startedAt": True}},
            upsert=True)
        MARK_COMPLETED_EARLY
        if thing.block:
            wanted = {"$in": ["release:all", f"release:{thing.id}"]}
            while await ctx.database["control"].find_one({"_id": wanted}) is None:
                await asyncio.sleep(0.02)
        if thing.hold_ms:
            await asyncio.sleep(thing.hold_ms / 1000)
        await runs.update_one({"_id": run_id}, {"$currentDate": {"finishedAt": True}})
"""


def definition(policies: str = "", trigger: str = WATCH_N) -> str:
    """The ``record`` reactor definition, with an optional ``policies:`` block (YAML lines
    indented by six spaces, under ``policies:``) and ``trigger:`` block (a whole block,
    indented by four spaces like the rest of the definition)."""
    return SCHEMA_HEAD + trigger + (f"    policies:\n{policies}" if policies else "")


def handler(name: str = "record", mark_completed_early: bool = False) -> str:
    """The recording handler of reactor ``name`` (its ``runs`` documents carry the name)."""
    return HANDLER.replace(
        "MARK_COMPLETED_EARLY",
        "await ctx.mark_completed()" if mark_completed_early else "pass").replace(
        "reactors.record", f"reactors.{name}").replace("REACTOR_NAME", name)


def build(make_app: AppBuilder, policies: str = "", mark_completed_early: bool = False) -> App:
    """Build the ``record`` application."""
    return make_app({"record": definition(policies)},
                    {"record": handler("record", mark_completed_early)})


def build_many(make_app: AppBuilder, reactors: dict[str, tuple[str, str]]) -> App:
    """Build an application of several recording reactors on ``things``:
    name -> (trigger block, policies block) as for :func:`definition`."""
    return make_app({name: definition(policies, trigger or WATCH_N)
                     for name, (trigger, policies) in reactors.items()},
                    {name: handler(name) for name in reactors})


def start(start_runtime: RuntimeFactory, app: App, name: str, *args: str,
          prefix: list[str] | None = None, env: dict[str, str] | None = None,
          wait: bool = True) -> RuntimeProcess:
    """``runtime serve`` as instance ``name`` (handlers see it as ``TEST_INSTANCE``)."""
    return start_runtime(app, instance_id=name, args=list(args),
                         env={"TEST_INSTANCE": name, **(env or {})}, prefix=prefix,
                         wait=wait)


def server_now(db: Database[Doc]) -> datetime.datetime:
    """The database server's clock (naive UTC, like the dates in documents)."""
    local_time = db.client.admin.command("hello")["localTime"]
    assert isinstance(local_time, datetime.datetime)
    return local_time.replace(tzinfo=None)


def release(db: Database[Doc], source: str = "all") -> None:
    """Let blocked handlers of ``source`` (or all) return."""
    db.control.update_one({"_id": f"release:{source}"}, {"$set": {"at": 1}}, upsert=True)


def task_of(db: Database[Doc], source: str) -> Doc | None:
    """The task document of a source (``things`` → ``things_tasks``)."""
    return db.things_tasks.find_one({"sourceId": source})


def runs_of(db: Database[Doc], source: str) -> list[Doc]:
    """Executions of a source's task, oldest first."""
    return list(db.runs.find({"source": source}).sort("startedAt", 1))


def lease_expired(db: Database[Doc], source: str) -> bool:
    """Whether the task's current lease (``nextRunAt`` while processing) has run out, judged
    by the server's clock."""
    return db.things_tasks.find_one(
        {"sourceId": source, "$expr": {"$lte": ["$nextRunAt", "$$NOW"]}}) is not None


def leader(db: Database[Doc]) -> Doc | None:
    """The leader lease document."""
    return db.reactgen_meta.find_one({"_id": "leader"})


def count(process: RuntimeProcess, pattern: str) -> int:
    """How many times ``pattern`` (a regex) occurs in a process's log."""
    return len(re.findall(pattern, process.log()))


def stays(predicate: Callable[[], object], seconds: float, message: str) -> None:
    """Assert that ``predicate`` holds throughout ``seconds`` (a negative check: something
    must *not* happen; polled, never used to wait for something to happen)."""
    deadline = time.monotonic() + seconds
    while True:
        assert predicate(), message
        if time.monotonic() >= deadline:
            return
        time.sleep(0.02)


def ms(delta: datetime.timedelta) -> float:
    """A duration in milliseconds."""
    return delta.total_seconds() * 1000


COMMAND_NOT_FOUND = 59


@contextmanager
def fail_point(client: MongoClient[Doc], data: Doc, mode: Any = "alwaysOn") -> Iterator[None]:
    """``failCommand`` with ``data`` while the block runs (skips the test where the server
    has no test commands). The runtime's planner uses the application name
    ``reactgen-<instance>-planner``, its workers and listeners ``reactgen-<instance>``."""
    try:
        client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})
    except OperationFailure as exc:
        if exc.code == COMMAND_NOT_FOUND:
            pytest.skip("configureFailPoint is not enabled on this server")
        raise
    try:
        yield
    finally:
        client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
