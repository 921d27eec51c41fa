"""The task operations of the management API (list, count, show, retry) against the test
server, on hand-written task documents of a real built application."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from conftest import AppBuilder
from management_support import Doc, management, reactors_of, task_doc
from pymongo import AsyncMongoClient, monitoring
from pymongo.database import Database
from scenario import build, definition, handler

from runtime.management import (
    InvalidSelection,
    Management,
    NotFound,
    TaskSelection,
    TaskSort,
    TaskStatus,
    UnknownReactor,
)

T0 = datetime.datetime(2030, 1, 1)
ERROR = "ValueError: price (x.y)* [1] is $bad"


def at(minutes: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def seed(db: Database[Doc]) -> None:
    """Source documents ``t0``..``t9`` (``n`` = index, ``kind`` odd/even) and their tasks."""
    db.things.insert_many([{"_id": f"t{i}", "n": i, "kind": "odd" if i % 2 else "even"}
                           for i in range(10)])
    statuses = ["pending", "failed", "completed", "processing", "skipped",
                "failed", "pending", "failed", "completed", "processing_dirty"]
    docs = []
    for i, status in enumerate(statuses):
        fields: dict[str, Any] = {"nextRunAt": at(10 - i), "updatedAt": at(i), "dueAt": at(i)}
        if status == "failed":
            fields["lastError"] = ERROR if i != 7 else "TimeoutError: price x.y"
        docs.append(task_doc(f"t{i}", status, **fields))
    db.things_tasks.insert_many(docs)


def test_count_by_every_filter(mongodb_uri: str, db: Database[Doc],
                               make_app: AppBuilder) -> None:
    app = build(make_app)
    seed(db)
    with management(mongodb_uri, db, app) as api:
        assert api.count_tasks() == 10
        assert api.count_tasks(TaskSelection(reactor="record")) == 10
        assert api.count_tasks(TaskSelection(statuses=(TaskStatus.FAILED,))) == 3
        assert api.count_tasks(TaskSelection(
            statuses=(TaskStatus.PENDING, TaskStatus.COMPLETED))) == 4
        # literal, case-insensitive: the metacharacters are not a pattern
        assert api.count_tasks(TaskSelection(error_text="PRICE (X.Y)* [1] IS $BAD")) == 2
        assert api.count_tasks(TaskSelection(error_text="price x.y")) == 1
        assert api.count_tasks(TaskSelection(error_text="(x.y)*")) == 2
        assert api.count_tasks(TaskSelection(error_text="price .")) == 0
        assert api.count_tasks(TaskSelection(source_ids=("t1", "t2", "nope"))) == 2
        assert api.count_tasks(TaskSelection(source_filter={"kind": "odd"})) == 5
        assert api.count_tasks(TaskSelection(source_filter={"n": {"$gte": 5}},
                                             statuses=(TaskStatus.FAILED,))) == 2
        assert api.count_tasks(TaskSelection(source_filter={"kind": "odd"},
                                             source_ids=("t1", "t2"))) == 1
        # the filter runs on the server: $expr and $$NOW work
        assert api.count_tasks(TaskSelection(
            source_filter={"$expr": {"$lt": ["$n", 3]}})) == 3


def test_source_filter_in_batches(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """More matching source documents than one batch: every batch is counted and listed."""
    import runtime.management.tasks as tasks_module

    monkeypatch.setattr(tasks_module, "SOURCE_BATCH", 3)
    app = build(make_app)
    seed(db)
    with management(mongodb_uri, db, app) as api:
        assert api.count_tasks(TaskSelection(source_filter={"n": {"$lt": 8}})) == 8
        page = api.list_tasks(TaskSelection(source_filter={"n": {"$lt": 8}}),
                              sort=TaskSort.UPDATED_AT, limit=3, skip=2)
        assert [t.source_id for t in page.tasks] == ["t2", "t3", "t4"]
        assert page.has_more and page.next_skip == 5
        last = api.list_tasks(TaskSelection(source_filter={"n": {"$lt": 8}}),
                              sort=TaskSort.UPDATED_AT, limit=3, skip=6)
        assert [t.source_id for t in last.tasks] == ["t6", "t7"]
        assert not last.has_more and last.next_skip is None


def test_list_sort_and_pagination(mongodb_uri: str, db: Database[Doc],
                                  make_app: AppBuilder) -> None:
    app = build(make_app)
    seed(db)
    with management(mongodb_uri, db, app) as api:
        first = api.list_tasks(limit=4)
        assert [t.source_id for t in first.tasks] == ["t9", "t8", "t7", "t6"]
        assert first.has_more and first.next_skip == 4
        second = api.list_tasks(limit=4, skip=first.next_skip or 0)
        assert [t.source_id for t in second.tasks] == ["t5", "t4", "t3", "t2"]
        third = api.list_tasks(limit=4, skip=8)
        assert [t.source_id for t in third.tasks] == ["t1", "t0"]
        assert not third.has_more
        by_update = api.list_tasks(sort=TaskSort.UPDATED_AT, descending=True, limit=3)
        assert [t.source_id for t in by_update.tasks] == ["t9", "t8", "t7"]
        failed = api.list_tasks(TaskSelection(statuses=(TaskStatus.FAILED,)),
                                sort=TaskSort.DUE_AT)
        assert [t.source_id for t in failed.tasks] == ["t1", "t5", "t7"]
        record = failed.tasks[0]
        assert record.status is TaskStatus.FAILED and record.last_error == ERROR
        assert record.collection == "things_tasks" and record.database == db.name
        with pytest.raises(InvalidSelection):
            api.list_tasks(limit=0)


def test_list_merges_tasks_collections(mongodb_uri: str, db: Database[Doc],
                                       make_app: AppBuilder) -> None:
    """Reactors on two collections: one page in the order MongoDB would sort them."""
    other = definition().replace("collection: things", "collection: others")
    app = make_app({"record": definition(), "other": other},
                   {"record": handler("record"), "other": handler("other")})
    db.things_tasks.insert_many([task_doc(f"a{i}", "pending", nextRunAt=at(2 * i))
                                 for i in range(4)])
    db.others_tasks.insert_many([task_doc(f"b{i}", "pending", "other", nextRunAt=at(2 * i + 1))
                                 for i in range(4)]
                                + [task_doc("b-none", "completed", "other")])
    with management(mongodb_uri, db, app) as api:
        page = api.list_tasks(limit=4, skip=1)
        assert [t.source_id for t in page.tasks] == ["a0", "b0", "a1", "b1"]
        assert {t.collection for t in page.tasks} == {"things_tasks", "others_tasks"}
        desc = api.list_tasks(descending=True, limit=2)
        assert [t.source_id for t in desc.tasks] == ["b3", "a3"]
        assert api.count_tasks() == 9
        assert api.count_tasks(TaskSelection(reactor="other")) == 5
        with pytest.raises(UnknownReactor, match="defined: other, record"):
            api.count_tasks(TaskSelection(reactor="nope"))


def test_show_task(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    app = build(make_app)
    history = [{"at": at(1), "status": "failed", "attempt": 1, "durationMs": 12.5,
                "error": "boom", "by": "a"},
               {"at": at(2), "status": "completed", "attempt": 2, "durationMs": 3, "by": "b"}]
    doc = task_doc(42, "completed", history=history, completedAt=at(2), lastFinalizedAt=at(2))
    db.things_tasks.insert_one(doc)
    with management(mongodb_uri, db, app) as api:
        task = api.show_task(doc["_id"])
        assert task.source_id == 42 and task.status is TaskStatus.COMPLETED
        assert [(h.status, h.attempt, h.error, h.by) for h in task.history] == [
            ("failed", 1, "boom", "a"), ("completed", 2, None, "b")]
        assert task.history[0].duration_ms == 12.5 and task.completed_at == at(2)
        assert api.show_task_of("record", 42).id == doc["_id"]
        with pytest.raises(NotFound):
            api.show_task_of("record", "42")
        with pytest.raises(NotFound):
            api.show_task(doc["_id"].__class__())


def test_retry_transitions(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    """One bulk update: finished tasks pending and due now with attempts reset, running ones
    dirty, pending ones due now; tasks whose source is gone are left alone."""
    app = build(make_app)
    lease = {"owner": "a", "claim": "c", "expiresAt": at(100)}
    db.things_tasks.insert_many([
        task_doc("failed", "failed", attempts=3, lastError="boom", firstErrorAt=at(0),
                 lastFinalizedAt=at(1)),
        task_doc("completed", "completed", attempts=1),
        task_doc("skipped", "skipped", skipReason="late-binding check failed"),
        task_doc("running", "processing", attempts=1, nextRunAt=at(100), lease=lease),
        task_doc("later", "pending", attempts=2, nextRunAt=at(60 * 24 * 365 * 10),
                 dueAt=at(60 * 24 * 365 * 10), lastError="boom"),
        task_doc("gone", "completed", expiresAt=at(5)),
    ])
    with management(mongodb_uri, db, app) as api:
        before = api.server_time()
        result = api.retry_tasks(TaskSelection(reactor="record"))
        after = api.server_time()
    assert (result.selected, result.matched, result.modified) == (5, 5, 5)
    tasks = {t["sourceId"]: t for t in db.things_tasks.find()}
    for name in ("failed", "completed", "skipped"):
        task = tasks[name]
        assert task["status"] == "pending" and task["attempts"] == 0
        assert task["firstErrorAt"] is None and task["skipReason"] is None
        assert before <= task["nextRunAt"] <= after and task["dueAt"] == task["nextRunAt"]
        assert task["retriedAt"] == task["nextRunAt"]
    assert tasks["failed"]["lastError"] == "boom"
    running = tasks["running"]
    assert running["status"] == "processing_dirty" and running["lease"] == lease
    assert running["nextRunAt"] == at(100) and running["attempts"] == 1
    later = tasks["later"]
    assert later["status"] == "pending" and later["attempts"] == 2
    assert before <= later["nextRunAt"] <= after and later["dueAt"] == later["nextRunAt"]
    assert tasks["gone"]["status"] == "completed" and "retriedAt" not in tasks["gone"]


class UpdateCounter(monitoring.CommandListener):
    """Counts the commands sent, by name."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] = self.counts.get(event.command_name, 0) + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_bulk_retry_of_20000_tasks_in_a_handful_of_commands(
        mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    app = build(make_app)
    db.things_tasks.insert_many([task_doc(i, "failed", attempts=5, lastError="boom")
                                 for i in range(20_000)])
    db.things_tasks.insert_many([task_doc(f"c{i}", "completed") for i in range(50)])
    counter = UpdateCounter()
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongodb_uri, event_listeners=[counter])
    progress: list[tuple[int, int]] = []
    try:
        api = Management(client[db.name], reactors_of(app))
        result = await api.retry_tasks(
            TaskSelection(reactor="record", statuses=(TaskStatus.FAILED,)),
            progress=lambda done, total: progress.append((done, total)))
    finally:
        await client.close()
    assert (result.selected, result.matched, result.modified) == (20_000, 20_000, 20_000)
    assert counter.counts["update"] == result.batches <= 5
    assert progress[0] == (0, 20_000) and progress[-1] == (20_000, 20_000)
    assert len(progress) == result.batches + 1
    assert db.things_tasks.count_documents({"status": "pending", "attempts": 0,
                                            "retriedAt": {"$type": "date"}}) == 20_000
    assert db.things_tasks.count_documents({"status": "completed"}) == 50


def test_selection_validation() -> None:
    assert TaskSelection(statuses=("failed",)).statuses == (TaskStatus.FAILED,)  # type: ignore[arg-type]
    assert TaskSelection().is_empty and not TaskSelection(error_text="x").is_empty
    with pytest.raises(InvalidSelection, match="unknown task status 'broken'"):
        TaskSelection(statuses=("broken",))  # type: ignore[arg-type]
    with pytest.raises(InvalidSelection):
        TaskSelection(source_filter=[("a", 1)])  # type: ignore[arg-type]
