"""``runtime.testing``: handlers run without a runtime, and the in-process integration harness.

The reactors here are :class:`ReactorSpec` values built in the test (the generated modules are
exercised by ``tests/example_app``); their handlers are the real functions under test, their
contexts the real :class:`HandlerTestContext`, their outcomes decided by the worker's own code.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field
from pymongo.database import Database

from runtime.app_loader import LoadedApp
from runtime.context import TaskContext
from runtime.reactor import Policies, ReactorSpec, RetryPolicy
from runtime.testing import (
    NoDatabaseError,
    NotIdleError,
    OutcomeKind,
    RuntimeHarness,
    run_handler,
    run_handler_async,
    would_trigger,
)

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5)


class Thing(BaseModel):
    """The test's document model."""

    model_config = ConfigDict(populate_by_name=True)
    id: str = Field(alias="_id")
    kind: str
    n: int


class ThingWatched(BaseModel):
    """Watched values: ``n`` only."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)
    n: int | None = None


Ctx = TaskContext[Thing, ThingWatched]


def reactor(name: str = "things_reactor", *, retry: RetryPolicy | None = None,
            timeout_ms: int | None = None, collection: str = "things") -> ReactorSpec:
    """A reactor on ``things`` with ``kind: ready``, watching ``n``."""
    return ReactorSpec(
        name=name, collection=collection, database=None, model=Thing,
        watched_model=ThingWatched, filter={"kind": "ready"}, watch={"n": "$n"},
        pipeline=[{"$match": {"ns.coll": collection, "operationType": {
            "$in": ["insert", "update", "replace", "delete", "drop", "rename"]}}}],
        policies=Policies(retry=retry or RetryPolicy(strategy="fixed", interval_ms=5000,
                                                     max_attempts=3),
                          timeout_ms=timeout_ms),
        handler=f"tests:{name}", trigger_fingerprint="test", source="test")


REACTOR = reactor()
DOC = {"_id": "t1", "kind": "ready", "n": 1}


async def completes(ctx: Ctx) -> None:
    """Reads the typed document and returns."""
    thing = await ctx.get_document()
    ctx.logger.info("thing %s n=%d attempt=%d watched=%s", thing.id, thing.n, ctx.attempt,
                    ctx.watched_values.n)


async def fails(ctx: Ctx) -> None:
    """Always raises."""
    await ctx.get_document()
    raise ConnectionError("ERP unreachable")


async def defers(ctx: Ctx) -> None:
    """Asks to run again in 90 s."""
    await ctx.defer(90_000)
    await ctx.throttle(1_000)


def sync_defers(ctx: Ctx) -> None:
    """A plain function: blocking variants, on a thread of its own."""
    ctx.get_document_sync()
    ctx.defer_sync(2_000)


async def hangs(ctx: Ctx) -> None:
    """Never returns by itself."""
    await asyncio.sleep(3600)


def test_completed_with_the_typed_document_and_watched_values() -> None:
    result = run_handler(completes, DOC, reactor=REACTOR, now=NOW, attempt=2)
    assert result.outcome is OutcomeKind.COMPLETED
    assert result.error is None and result.retry_in is None and result.deferred_until is None
    assert result.logs == ["thing t1 n=1 attempt=2 watched=1"]
    assert isinstance(result.context.watched_values, ThingWatched)


def test_retry_with_the_policy_delay_then_failed_at_the_last_attempt() -> None:
    result = run_handler(fails, DOC, reactor=REACTOR, now=NOW)
    assert result.outcome is OutcomeKind.RETRY
    assert result.error == "ConnectionError: ERP unreachable"
    assert result.retry_in == datetime.timedelta(seconds=5)
    assert result.retry_at == NOW + datetime.timedelta(seconds=5)
    assert result.traceback is not None and "ERP unreachable" in result.traceback
    assert isinstance(result.exception, ConnectionError)
    last = run_handler(fails, DOC, reactor=REACTOR, now=NOW, attempt=3)
    assert last.outcome is OutcomeKind.FAILED
    assert last.retry_in is None and last.error == "ConnectionError: ERP unreachable"


def test_retry_strategies_and_retry_window_come_from_the_policy() -> None:
    exponential = reactor(retry=RetryPolicy(strategy="exponential", min_ms=1000, factor=2,
                                            max_attempts=None, max_duration_ms=60_000))
    third = run_handler(fails, DOC, reactor=exponential, now=NOW, attempt=3)
    assert third.outcome is OutcomeKind.RETRY
    assert third.retry_in == datetime.timedelta(seconds=4)
    late = run_handler(fails, DOC, reactor=exponential, now=NOW, attempt=4,
                       first_error_at=NOW - datetime.timedelta(minutes=2))
    assert late.outcome is OutcomeKind.FAILED
    hourly = reactor(retry=RetryPolicy(strategy="cron", cron="0 * * * *", max_attempts=None))
    result = run_handler(fails, DOC, reactor=hourly, now=NOW)
    assert result.retry_at == datetime.datetime(2030, 1, 2, 4, 0)


def test_deferred_until_and_throttle() -> None:
    result = run_handler(defers, DOC, reactor=REACTOR, now=NOW)
    assert result.outcome is OutcomeKind.DEFERRED
    assert result.deferred_until == NOW + datetime.timedelta(seconds=90)
    assert result.throttled_for == datetime.timedelta(seconds=1)


def test_plain_function_handlers_run_like_the_worker_runs_them() -> None:
    result = run_handler(sync_defers, DOC, reactor=REACTOR, now=NOW)
    assert result.outcome is OutcomeKind.DEFERRED
    assert result.deferred_for == datetime.timedelta(seconds=2)


def test_skipped_when_the_document_is_gone_unmatched_or_changed() -> None:
    gone = run_handler(completes, DOC, reactor=REACTOR, current=None)
    assert gone.outcome is OutcomeKind.SKIPPED
    assert gone.error == "source document deleted or no longer matches the filter"
    unmatched = run_handler(completes, DOC, reactor=REACTOR, current={"kind": "draft", "n": 1})
    assert unmatched.outcome is OutcomeKind.SKIPPED
    changed = run_handler(completes, DOC, reactor=REACTOR, current={"kind": "ready", "n": 2})
    assert changed.outcome is OutcomeKind.SKIPPED
    assert changed.error == "watched values changed since the task was planned"
    unwatched = run_handler(completes, DOC, reactor=REACTOR,
                            current={"kind": "ready", "n": 1, "note": "x"})
    assert unwatched.outcome is OutcomeKind.COMPLETED


def test_an_invalid_document_is_a_failure_naming_the_validation() -> None:
    result = run_handler(completes, {"_id": "t1", "kind": "ready", "n": "many"},
                         reactor=REACTOR)
    assert result.outcome is OutcomeKind.RETRY
    assert result.error is not None
    assert result.error.startswith("source document failed validation")


def test_timeout_is_the_reactor_policy_or_given() -> None:
    result = run_handler(hangs, DOC, reactor=reactor(timeout_ms=50))
    assert result.outcome is OutcomeKind.RETRY
    assert result.error == "handler timed out after 50 ms"
    result = run_handler(hangs, DOC, reactor=REACTOR, timeout_ms=30)
    assert result.error == "handler timed out after 30 ms"


def test_a_document_the_filter_rules_out_is_a_usage_error() -> None:
    assert would_trigger(REACTOR, DOC)
    assert not would_trigger(REACTOR, {"_id": "t2", "kind": "draft", "n": 1})
    with pytest.raises(ValueError, match="does not match the trigger filter"):
        run_handler(completes, {"_id": "t2", "kind": "draft", "n": 1}, reactor=REACTOR)


async def writes(ctx: Ctx) -> None:
    """Writes through ctx.database."""
    thing = await ctx.get_document()
    await ctx.database["effects"].insert_one({"_id": thing.id, "n": thing.n})


def test_database_use_without_a_database_is_a_usage_error() -> None:
    with pytest.raises(NoDatabaseError, match="pass database="):
        run_handler(writes, DOC, reactor=REACTOR)


def test_handler_writes_go_to_the_given_database(db: Database[dict[str, Any]]) -> None:
    result = run_handler(writes, DOC, reactor=REACTOR, database=db)
    assert result.outcome is OutcomeKind.COMPLETED
    assert db.effects.find_one({"_id": "t1"}) == {"_id": "t1", "n": 1}
    assert db.things.find_one({"_id": "t1"}) == DOC  # the source document, as stored
    gone = run_handler(writes, {**DOC, "_id": "t9"}, reactor=REACTOR, database=db, current=None)
    assert gone.outcome is OutcomeKind.SKIPPED


async def completes_in_transaction(ctx: Ctx) -> None:
    """Writes and completes in one transaction, then fails if ``n`` is 2 (after the commit)
    or fails inside the transaction if ``n`` is 3 (rolled back)."""
    thing = await ctx.get_document()
    async with ctx.database.client.start_session() as session, \
            await session.start_transaction():
        await ctx.database["effects"].insert_one({"_id": thing.id}, session=session)
        await ctx.mark_completed(session=session)
        if thing.n == 3:
            raise RuntimeError("inside the transaction")
    if thing.n == 2:
        raise RuntimeError("after the commit")


def test_mark_completed_in_a_transaction(db: Database[dict[str, Any]]) -> None:
    committed = run_handler(completes_in_transaction, DOC, reactor=REACTOR, database=db)
    assert committed.outcome is OutcomeKind.COMPLETED and committed.completed_in_transaction
    after = run_handler(completes_in_transaction, {"_id": "t2", "kind": "ready", "n": 2},
                        reactor=REACTOR, database=db)
    assert after.outcome is OutcomeKind.COMPLETED
    assert after.error == "after mark_completed(): RuntimeError: after the commit"
    aborted = run_handler(completes_in_transaction, {"_id": "t3", "kind": "ready", "n": 3},
                          reactor=REACTOR, database=db)
    assert aborted.outcome is OutcomeKind.RETRY
    assert aborted.error == "RuntimeError: inside the transaction"
    assert db.effects.count_documents({}) == 2  # t1 and t2; t3's write was rolled back
    assert db.reactgen_testing_completions.count_documents({}) == 0


async def test_async_variant_inside_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="run_handler_async"):
        run_handler(completes, DOC, reactor=REACTOR)
    result = await run_handler_async(completes, DOC, reactor=REACTOR)
    assert result.outcome is OutcomeKind.COMPLETED


# ---------------------------------------------------------------------- the harness

RELEASE = threading.Event()


async def slow_effect(ctx: Any) -> None:
    """Takes a while, then records its effect."""
    thing = await ctx.get_document()
    await asyncio.sleep(0.5)
    await ctx.database["effects"].insert_one({"_id": thing.id, "n": thing.n})


def blocks(ctx: Any) -> None:
    """A plain function that hangs until the test releases it."""
    RELEASE.wait(30)


def _app(handler: Any, name: str) -> LoadedApp:
    spec = reactor(name)
    return LoadedApp([spec], {spec.name: handler}, {}, [])


@pytest.fixture
def released() -> Iterator[None]:
    """Releases :func:`blocks` at the end of the test, whatever happened."""
    RELEASE.clear()
    yield
    RELEASE.set()


def test_wait_until_idle_returns_after_the_task_finished(tmp_path: Any) -> None:
    with RuntimeHarness(_app(slow_effect, "slow")) as harness:
        harness.wait_until_idle()  # nothing written yet: idle at once
        harness.db.things.insert_one(dict(DOC))
        harness.db.things.insert_one({"_id": "t2", "kind": "draft", "n": 5})
        harness.wait_until_idle(timeout=20)
        assert harness.db.effects.find_one({"_id": "t1"}) == {"_id": "t1", "n": 1}
        task = harness.task("slow", "t1")
        assert task is not None and task["status"] == "completed"
        assert [entry["status"] for entry in task["history"]] == ["completed"]
        assert harness.task("slow", "t2") is None  # the filter ruled it out
        harness.db.things.update_one({"_id": "t1"}, {"$set": {"n": 2}})
        harness.wait_until_idle(timeout=20)  # a pending retry is not waited for by default
        task = harness.task("slow", "t1")
        assert task is not None and task["status"] == "pending"  # its insert was a duplicate
        assert "duplicate key" in task["lastError"]
        assert [entry["status"] for entry in task["history"]] == ["completed", "failed"]


def test_wait_until_idle_times_out_naming_the_running_task(released: None) -> None:
    with RuntimeHarness(_app(blocks, "stuck")) as harness:
        harness.db.things.insert_one(dict(DOC))
        started = time.monotonic()
        with pytest.raises(NotIdleError) as error:
            harness.wait_until_idle(timeout=2)
        assert 2 <= time.monotonic() - started < 10
        message = str(error.value)
        assert "not idle after 2 s" in message
        assert "task stuck for 't1': processing, running since" in message
        RELEASE.set()
        harness.wait_until_idle(timeout=20)
        assert harness.task("stuck", "t1")["status"] == "completed"  # type: ignore[index]


async def projects(ctx: Ctx) -> None:
    """Reads only ``n``: a plain dict of the projected fields, as stored."""
    partial = await ctx.get_document(projection={"n": 1})
    ctx.logger.info("%s %s", type(partial).__name__, sorted(partial.items()))


def sync_projects(ctx: Ctx) -> None:
    """The blocking variant of :func:`projects`."""
    partial = ctx.get_document_sync(projection={"n": 1, "_id": 0})
    ctx.logger.info("%s %s", type(partial).__name__, sorted(partial.items()))


def test_a_projection_gives_a_dict_of_the_projected_fields() -> None:
    result = run_handler(projects, DOC, reactor=REACTOR, now=NOW)
    assert result.outcome is OutcomeKind.COMPLETED, result.error
    assert result.logs == ["dict [('_id', 't1'), ('n', 1)]"]
    result = run_handler(sync_projects, DOC, reactor=REACTOR, now=NOW)
    assert result.outcome is OutcomeKind.COMPLETED, result.error
    assert result.logs == ["dict [('n', 1)]"]
