"""The smallest end-to-end check: a document insert runs its reactor's handler once."""

from __future__ import annotations

from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from support import wait_until

DEFINITION = """
    collection: things
    schema:
      type: object
      title: Thing
      properties:
        _id: {type: string}
        n: {type: integer}
    trigger:
      watch: [n]
"""
HANDLER = """
    from {package}.reactors.record import Context

    async def handle(ctx: Context) -> None:
        thing = await ctx.get_document()
        await ctx.database["runs"].insert_one({"source": thing.id, "n": thing.n,
                                               "attempt": ctx.attempt})
"""


def test_insert_runs_handler_once(make_app: AppBuilder, start_runtime: RuntimeFactory,
                                  db: Database[dict[str, Any]]) -> None:
    app = make_app({"record": DEFINITION}, {"record": HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "a", "n": 1})
    wait_until(lambda: db.runs.count_documents({"source": "a"}) == 1)
    task = wait_until(lambda: db.things_tasks.find_one({"sourceId": "a",
                                                        "status": "completed"}))
    assert task["attempts"] == 1
    db.things.update_one({"_id": "a"}, {"$set": {"n": 2}})
    wait_until(lambda: db.runs.count_documents({"source": "a", "n": 2}) == 1)
    assert db.runs.count_documents({"source": "a"}) == 2
