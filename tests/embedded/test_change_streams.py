"""Change streams through PyMongo over TCP: scopes, event types, resuming, batches and waiting.

Every test not marked ``embedded_only`` is valid against a real MongoDB 7.0 replica set
(``MONGODB_URI``) as well as against the embedded server the fixtures start as a separate
process. Options (``fullDocument``, pre-images, expanded events, further stages) are in
``test_change_stream_options.py``.

No test sleeps to synchronise: a stream is read with ``try_next`` (one ``getMore`` that the
server holds until a change commits or the await time passes) under a generous deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from bson import Int64, Timestamp
from change_stream_support import (
    AWAIT_MS,
    DEADLINE_S,
    Change,
    Stream,
    changes,
    expect_sentinel,
    next_change,
)
from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.database import Database
from pymongo.errors import OperationFailure
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)
from support import ServerFactory

Db = Database[dict[str, Any]]

#: A real MongoDB's TTL monitor runs once a minute; the embedded one every second.
TTL_DEADLINE_S = 150.0


class _Listener(CommandListener):
    def __init__(self, recorder: CommandRecorder) -> None:
        self.recorder = recorder

    def started(self, event: CommandStartedEvent) -> None:
        self.recorder.on_started(event)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        self.recorder.on_succeeded(event)

    def failed(self, event: CommandFailedEvent) -> None:
        pass


class CommandRecorder:
    """Aggregate/getMore commands of one client and their replies."""

    def __init__(self) -> None:
        self.commands: list[CommandStartedEvent] = []
        self.replies: list[CommandSucceededEvent] = []
        self.get_more_started = threading.Event()
        self.listener = _Listener(self)

    def on_started(self, event: CommandStartedEvent) -> None:
        if event.command_name in ("aggregate", "getMore", "killCursors"):
            self.commands.append(event)
        if event.command_name == "getMore":
            self.get_more_started.set()

    def on_succeeded(self, event: CommandSucceededEvent) -> None:
        if event.command_name in ("aggregate", "getMore"):
            self.replies.append(event)

    def names(self) -> list[str]:
        return [e.command_name for e in self.commands]

    def cursor_replies(self) -> list[dict[str, Any]]:
        return [dict(e.reply["cursor"]) for e in self.replies if "cursor" in e.reply]


@pytest.fixture
def recorder() -> CommandRecorder:
    return CommandRecorder()


@pytest.fixture
def watcher(mongodb_uri: str, recorder: CommandRecorder) -> Iterator[MongoClient[dict[str, Any]]]:
    """A second client, whose aggregate/getMore commands the ``recorder`` sees."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        mongodb_uri, event_listeners=[recorder.listener]
    )
    try:
        yield client
    finally:
        client.close()


def _cached_token(stream: Stream) -> str:
    """The resume token the driver holds (after an empty batch: the batch's PBRT)."""
    token = stream.resume_token
    assert token is not None
    data = token["_data"]
    assert isinstance(data, str)
    return data


def _token(change: Mapping[str, Any]) -> str:
    data = change["_id"]["_data"]
    assert isinstance(data, str)
    return data


# -- event types on a collection stream --------------------------------------------------------


def test_collection_stream_reports_document_changes(db: Db) -> None:
    coll = db.events
    coll.insert_one({"_id": "seed"})  # the collection exists before the stream opens
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.insert_one({"_id": 1, "name": "a", "tags": ["x", "y"], "gone": True,
                         "nested": {"keep": 1, "drop": 2}})
        coll.update_one({"_id": 1}, {"$set": {"name": "b", "nested.keep": 3},
                                     "$unset": {"gone": "", "nested.drop": ""},
                                     "$push": {"tags": "z"}})
        # A pipeline update is described by diffing the documents: a shortened array.
        coll.update_one({"_id": 1}, [{"$set": {"tags": ["x"]}}])
        coll.replace_one({"_id": 1}, {"name": "c"})
        coll.delete_one({"_id": 1})
        insert, update, truncate, replace, delete = changes(stream, 5)

    assert insert["operationType"] == "insert"
    assert insert["ns"] == {"db": db.name, "coll": "events"}
    assert insert["documentKey"] == {"_id": 1}
    assert insert["fullDocument"] == {"_id": 1, "name": "a", "tags": ["x", "y"], "gone": True,
                                      "nested": {"keep": 1, "drop": 2}}
    assert isinstance(insert["clusterTime"], Timestamp)
    assert isinstance(insert["wallTime"], datetime.datetime)
    assert "collectionUUID" not in insert  # only with showExpandedEvents

    assert update["operationType"] == "update"
    assert update["documentKey"] == {"_id": 1}
    assert "fullDocument" not in update  # fullDocument: default
    description = update["updateDescription"]
    assert description["updatedFields"] == {"name": "b", "nested.keep": 3, "tags.2": "z"}
    assert sorted(description["removedFields"]) == ["gone", "nested.drop"]
    assert description["truncatedArrays"] == []
    assert "disambiguatedPaths" not in description

    assert truncate["updateDescription"] == {
        "updatedFields": {}, "removedFields": [],
        "truncatedArrays": [{"field": "tags", "newSize": 1}],
    }

    assert replace["operationType"] == "replace"
    assert replace["fullDocument"] == {"_id": 1, "name": "c"}
    assert replace["documentKey"] == {"_id": 1}
    assert "updateDescription" not in replace

    assert delete["operationType"] == "delete"
    assert delete["documentKey"] == {"_id": 1}
    assert "fullDocument" not in delete

    times = [c["clusterTime"] for c in (insert, update, truncate, replace, delete)]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_collection_stream_sees_only_its_collection(db: Db) -> None:
    db.watched.insert_one({"_id": "seed"})
    with db.watched.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.other.insert_one({"_id": "elsewhere"})
        db.watched.insert_one({"_id": "here"})
        change = next_change(stream)
    assert change["documentKey"] == {"_id": "here"}
    assert change["ns"] == {"db": db.name, "coll": "watched"}


def test_drop_is_followed_by_invalidate_and_the_stream_closes(
    db: Db, watcher: MongoClient[dict[str, Any]], recorder: CommandRecorder
) -> None:
    db.doomed.insert_one({"_id": "seed"})
    stream = watcher[db.name].doomed.watch(max_await_time_ms=AWAIT_MS)
    with stream:
        db.doomed.insert_one({"_id": 1})
        db.doomed.drop()
        insert, drop, invalidate = changes(stream, 3)
        assert not stream.alive
        assert stream.try_next() is None
        with pytest.raises(StopIteration):
            stream.next()
    assert insert["operationType"] == "insert"
    assert drop["operationType"] == "drop"
    assert drop["ns"] == {"db": db.name, "coll": "doomed"}
    assert set(invalidate) == {"_id", "operationType", "clusterTime", "wallTime"}
    assert invalidate["operationType"] == "invalidate"
    assert invalidate["clusterTime"] == drop["clusterTime"]
    assert _token(drop) < _token(invalidate)
    # The reply that delivered the invalidate closed the cursor (id 0) and carried its token.
    last = recorder.cursor_replies()[-1]
    assert last["id"] == 0
    assert last["postBatchResumeToken"] == invalidate["_id"]
    assert "killCursors" not in recorder.names()


def test_rename_reports_target_and_invalidates_both_namespaces(db: Db) -> None:
    db.source.insert_one({"_id": 1})
    db.target.insert_one({"_id": 2})
    db.target.drop()
    with db.source.watch(max_await_time_ms=AWAIT_MS) as source_stream, \
            db.target.watch(max_await_time_ms=AWAIT_MS) as target_stream:
        db.source.rename("target")
        rename, invalidate = changes(source_stream, 2)
        assert not source_stream.alive
        target_rename, target_invalidate = changes(target_stream, 2)
        assert not target_stream.alive
    assert rename["operationType"] == "rename"
    assert rename["ns"] == {"db": db.name, "coll": "source"}
    assert rename["to"] == {"db": db.name, "coll": "target"}
    assert "operationDescription" not in rename
    assert invalidate["operationType"] == "invalidate"
    assert target_rename["_id"] == rename["_id"]
    assert target_invalidate["operationType"] == "invalidate"


def test_drop_database_invalidates_collection_streams(db: Db) -> None:
    db.inside.insert_one({"_id": 1})
    with db.inside.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.client.drop_database(db.name)
        drop, invalidate = changes(stream, 2)
        assert not stream.alive
    assert drop["operationType"] == "drop"
    assert drop["ns"] == {"db": db.name, "coll": "inside"}
    assert invalidate["operationType"] == "invalidate"


# -- database and cluster streams --------------------------------------------------------------


def test_database_stream_covers_all_collections_until_drop_database(db: Db) -> None:
    db.first.insert_one({"_id": "seed"})
    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.first.insert_one({"_id": 1})
        db.second.insert_one({"_id": 2})
        db.first.update_one({"_id": 1}, {"$set": {"x": 1}})
        db.second.rename("third")
        db.third.drop()  # dropping a collection does not invalidate a database stream
        db.first.insert_one({"_id": 3})
        db.client.drop_database(db.name)
        events = changes(stream, 9)
        assert not stream.alive
    kinds = [(e["operationType"], e.get("ns", {}).get("coll")) for e in events]
    assert kinds == [
        ("insert", "first"), ("insert", "second"), ("update", "first"),
        ("rename", "second"), ("drop", "third"), ("insert", "first"),
        ("drop", "first"), ("dropDatabase", None), ("invalidate", None),
    ]
    assert events[3]["to"] == {"db": db.name, "coll": "third"}
    drop_database, invalidate = events[-2:]
    assert drop_database["ns"] == {"db": db.name}
    assert set(invalidate) == {"_id", "operationType", "clusterTime", "wallTime"}
    assert invalidate["operationType"] == "invalidate"


def test_cluster_stream_spans_databases_and_survives_drop_database(
    client: MongoClient[dict[str, Any]], db: Db
) -> None:
    other = client[f"{db.name}_b"]
    names = [db.name, other.name]
    pipeline = [{"$match": {"ns.db": {"$in": names}}}]
    try:
        with client.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
            db.a.insert_one({"_id": 1})
            other.b.insert_one({"_id": 2})
            client.drop_database(other.name)
            db.a.insert_one({"_id": 3})
            first, second, drop, drop_database, third = changes(stream, 5)
            assert stream.alive
    finally:
        client.drop_database(other.name)
    assert (first["ns"], first["documentKey"]) == ({"db": db.name, "coll": "a"}, {"_id": 1})
    assert (second["ns"], second["documentKey"]) == ({"db": other.name, "coll": "b"}, {"_id": 2})
    assert drop["operationType"] == "drop"
    assert drop_database["operationType"] == "dropDatabase"
    assert drop_database["ns"] == {"db": other.name}
    assert third["documentKey"] == {"_id": 3}


def test_cluster_stream_only_on_admin(client: MongoClient[dict[str, Any]], db: Db) -> None:
    with pytest.raises(OperationFailure):
        db.command("aggregate", 1, pipeline=[{"$changeStream": {"allChangesForCluster": True}}],
                   cursor={})
    with pytest.raises(OperationFailure):
        client.admin.command("aggregate", 1, pipeline=[{"$changeStream": {}}], cursor={})


# -- resuming ----------------------------------------------------------------------------------


def test_resume_after_continues_after_the_token(db: Db) -> None:
    db.log.insert_one({"_id": "seed"})
    with db.log.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.log.insert_many([{"_id": i} for i in range(4)])
        first, second = changes(stream, 2)
    with db.log.watch(resume_after=first["_id"], max_await_time_ms=AWAIT_MS) as resumed:
        again = changes(resumed, 3)
    assert again[0] == second
    assert [c["documentKey"]["_id"] for c in again] == [1, 2, 3]


def test_start_after_an_invalidate_sees_the_recreated_collection(db: Db) -> None:
    db.phoenix.insert_one({"_id": "seed"})
    with db.phoenix.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.phoenix.drop()
        drop, invalidate = changes(stream, 2)
    db.phoenix.insert_one({"_id": "reborn"})
    with db.phoenix.watch(start_after=invalidate["_id"], max_await_time_ms=AWAIT_MS) as again:
        change = next_change(again)
    assert change["operationType"] == "insert"
    assert change["documentKey"] == {"_id": "reborn"}
    # resumeAfter may not start from an invalidate.
    with pytest.raises(OperationFailure) as info:
        db.phoenix.watch(resume_after=invalidate["_id"])
    assert info.value.code == 260
    assert drop["operationType"] == "drop"


def test_resume_after_the_drop_event_still_delivers_the_invalidate(db: Db) -> None:
    db.fragile.insert_one({"_id": "seed"})
    with db.fragile.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.fragile.drop()
        drop = next_change(stream)
    assert drop["operationType"] == "drop"
    with db.fragile.watch(resume_after=drop["_id"], max_await_time_ms=AWAIT_MS) as resumed:
        invalidate = next_change(resumed)
        assert invalidate["operationType"] == "invalidate"
        assert not resumed.alive


def test_start_at_operation_time_is_inclusive(client: MongoClient[dict[str, Any]], db: Db) -> None:
    db.timeline.insert_one({"_id": "before"})
    with client.start_session() as session:
        db.timeline.insert_one({"_id": "at"}, session=session)
        at = session.operation_time
    assert isinstance(at, Timestamp)
    db.timeline.insert_one({"_id": "after"})
    with db.timeline.watch(start_at_operation_time=at, max_await_time_ms=AWAIT_MS) as stream:
        first, second = changes(stream, 2)
    assert first["documentKey"] == {"_id": "at"}
    assert first["clusterTime"] == at
    assert second["documentKey"] == {"_id": "after"}


def test_resume_options_are_mutually_exclusive(db: Db) -> None:
    db.opts.insert_one({"_id": "seed"})
    with db.opts.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.opts.insert_one({"_id": 1})
        token = next_change(stream)["_id"]
    # The driver sends only one of them; the server must refuse a command with several.
    for options in ({"resumeAfter": token, "startAfter": token},
                    {"resumeAfter": token, "startAtOperationTime": Timestamp(1, 1)}):
        with pytest.raises(OperationFailure) as info:
            db.command("aggregate", "opts", pipeline=[{"$changeStream": options}], cursor={})
        assert info.value.code == 40674


def test_driver_resumes_transparently_when_the_cursor_is_killed(
    db: Db, watcher: MongoClient[dict[str, Any]], recorder: CommandRecorder
) -> None:
    db.resumable.insert_one({"_id": "seed"})
    with watcher[db.name].resumable.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.resumable.insert_many([{"_id": 1}, {"_id": 2}])
        assert next_change(stream)["documentKey"] == {"_id": 1}
        cursor_id = recorder.cursor_replies()[0]["id"]
        assert cursor_id != 0
        db.command("killCursors", "resumable", cursors=[cursor_id])
        db.resumable.insert_one({"_id": 3})
        rest = changes(stream, 2)
    assert [c["documentKey"]["_id"] for c in rest] == [2, 3]
    # The getMore on the killed cursor failed; the driver re-ran the aggregate with its token.
    aggregates = [e.command for e in recorder.commands if e.command_name == "aggregate"]
    assert len(aggregates) == 2
    assert "resumeAfter" in aggregates[1]["pipeline"][0]["$changeStream"]


# -- batches and resume tokens ----------------------------------------------------------------


def test_post_batch_resume_token_on_every_batch_and_tokens_follow_the_log(
    db: Db, watcher: MongoClient[dict[str, Any]], recorder: CommandRecorder
) -> None:
    db.tokens.insert_one({"_id": "seed"})
    stream = watcher[db.name].tokens.watch(max_await_time_ms=100, batch_size=2)
    seen: list[str] = []  # event ids and PBRTs, in the order the client got them
    with stream:
        assert stream.try_next() is None  # an empty batch
        seen.append(_cached_token(stream))
        db.tokens.insert_many([{"_id": i} for i in range(5)])
        db.other.insert_one({"_id": "not in scope"})
        for _ in range(5):
            change = next_change(stream)
            seen.append(_token(change))
        assert stream.try_next() is None  # empty again, past the out-of-scope insert
        seen.append(_cached_token(stream))
    replies = recorder.cursor_replies()
    assert len(replies) >= 4
    for reply in replies:
        assert "postBatchResumeToken" in reply, reply
        batch = reply.get("firstBatch", reply.get("nextBatch"))
        assert batch is not None
        assert len(batch) <= 2
        if batch:
            assert reply["postBatchResumeToken"]["_data"] >= _token(batch[-1])
    assert any(not r.get("firstBatch", r.get("nextBatch")) for r in replies)
    pbrts = [r["postBatchResumeToken"]["_data"] for r in replies]
    assert pbrts == sorted(pbrts)
    assert seen == sorted(seen)
    event_ids = seen[1:-1]
    assert len(set(event_ids)) == len(event_ids)
    # The final (empty) batch's token is beyond every event delivered.
    assert seen[-1] > event_ids[-1]


def test_resuming_from_an_empty_batch_token_misses_nothing(db: Db) -> None:
    db.quiet.insert_one({"_id": "seed"})
    with db.quiet.watch(max_await_time_ms=100) as stream:
        assert stream.try_next() is None
        token = stream.resume_token
    db.quiet.insert_one({"_id": "later"})
    with db.quiet.watch(resume_after=token, max_await_time_ms=AWAIT_MS) as resumed:
        assert next_change(resumed)["documentKey"] == {"_id": "later"}


# -- waiting -----------------------------------------------------------------------------------


def test_get_more_returns_as_soon_as_a_change_commits(
    db: Db, watcher: MongoClient[dict[str, Any]], recorder: CommandRecorder
) -> None:
    db.waiting.insert_one({"_id": "seed"})
    stream = watcher[db.name].waiting.watch(max_await_time_ms=120_000)
    received: list[Change] = []
    with stream:
        reader = threading.Thread(target=lambda: received.append(stream.next()), daemon=True)
        reader.start()
        assert recorder.get_more_started.wait(DEADLINE_S), "the watcher sent no getMore"
        db.waiting.insert_one({"_id": "wake"})
        reader.join(DEADLINE_S)  # far less than the 120 s the getMore may wait
        assert not reader.is_alive(), "the waiting getMore did not return the change"
    assert received[0]["documentKey"] == {"_id": "wake"}
    # One getMore: it was waiting when the insert committed and returned with it.
    assert recorder.names().count("getMore") == 1
    get_more_reply = recorder.cursor_replies()[-1]
    assert [c["documentKey"] for c in get_more_reply["nextBatch"]] == [{"_id": "wake"}]


def test_get_more_without_changes_returns_an_empty_batch_after_the_await(
    db: Db, watcher: MongoClient[dict[str, Any]], recorder: CommandRecorder
) -> None:
    db.idle.insert_one({"_id": "seed"})
    with watcher[db.name].idle.watch(max_await_time_ms=50) as stream:
        assert stream.try_next() is None
        assert stream.alive
    get_mores = [e for e in recorder.commands if e.command_name == "getMore"]
    assert get_mores[0].command["maxTimeMS"] == 50
    assert recorder.cursor_replies()[-1]["nextBatch"] == []


async def test_async_client_get_more_wakes_on_commit(
    mongodb_uri: str, async_client: AsyncMongoClient[dict[str, Any]]
) -> None:
    loop = asyncio.get_running_loop()
    get_more_sent = asyncio.Event()

    class Signal(CommandListener):
        def started(self, event: CommandStartedEvent) -> None:
            if event.command_name == "getMore":
                loop.call_soon_threadsafe(get_more_sent.set)

        def succeeded(self, event: CommandSucceededEvent) -> None:
            pass

        def failed(self, event: CommandFailedEvent) -> None:
            pass

    name = f"t_{uuid.uuid4().hex[:10]}_async_wait"
    watcher: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_uri, event_listeners=[Signal()]
    )
    try:
        await async_client[name].items.insert_one({"_id": "seed"})
        stream: AsyncChangeStream[dict[str, Any]] = await watcher[name].items.watch(
            max_await_time_ms=120_000
        )
        async with stream:
            waiting = asyncio.create_task(stream.next())
            await asyncio.wait_for(get_more_sent.wait(), DEADLINE_S)
            assert not waiting.done()
            await async_client[name].items.insert_one({"_id": "wake", "v": 1})
            change = await asyncio.wait_for(waiting, DEADLINE_S)
        assert change["operationType"] == "insert"
        assert change["fullDocument"] == {"_id": "wake", "v": 1}
    finally:
        await watcher.close()
        await async_client.drop_database(name)


async def test_async_client_database_stream_events(
    async_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    name = f"t_{uuid.uuid4().hex[:10]}_async_db"
    database = async_client[name]
    try:
        await database.a.insert_one({"_id": "seed"})
        async with await database.watch(max_await_time_ms=AWAIT_MS) as stream:
            await database.a.update_one({"_id": "seed"}, {"$set": {"n": 1}})
            await database.b.insert_one({"_id": 1})
            await database.b.delete_one({"_id": 1})
            await async_client.drop_database(name)
            seen: list[Change] = []
            while stream.alive and len(seen) < 8:
                change = await stream.try_next()
                if change is not None:
                    seen.append(change)
        kinds = [c["operationType"] for c in seen]
        assert kinds[:3] == ["update", "insert", "delete"]
        assert kinds[-2:] == ["dropDatabase", "invalidate"]
        assert sorted(kinds[3:-2]) == ["drop", "drop"]
        assert seen[0]["updateDescription"]["updatedFields"] == {"n": 1}
    finally:
        await async_client.drop_database(name)


# -- transactions ------------------------------------------------------------------------------


def test_committed_transaction_events_appear_together_with_lsid(
    client: MongoClient[dict[str, Any]], db: Db
) -> None:
    db.accounts.insert_many([{"_id": "alice", "balance": 10}, {"_id": "bob", "balance": 0}])
    with db.accounts.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as session, session.start_transaction():
            db.accounts.update_one({"_id": "alice"}, {"$inc": {"balance": -5}},
                                   session=session)
            db.accounts.update_one({"_id": "bob"}, {"$inc": {"balance": 5}}, session=session)
            db.accounts.insert_one({"_id": "ledger-1", "amount": 5}, session=session)
            lsid = session.session_id
        db.accounts.insert_one({"_id": "after"})
        events = changes(stream, 4)
    txn, after = events[:3], events[3]
    assert [e["operationType"] for e in txn] == ["update", "update", "insert"]
    assert [e["documentKey"]["_id"] for e in txn] == ["alice", "bob", "ledger-1"]
    assert len({e["clusterTime"] for e in txn}) == 1
    # A real server adds the user's hash as lsid.uid; the session id is what identifies it.
    assert all(e["lsid"]["id"] == lsid["id"] for e in txn)
    numbers = {e["txnNumber"] for e in txn}
    assert len(numbers) == 1 and isinstance(numbers.pop(), Int64)
    tokens = [_token(e) for e in events]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    assert "lsid" not in after and "txnNumber" not in after
    assert after["clusterTime"] > txn[0]["clusterTime"]


def test_aborted_transaction_produces_no_events(
    client: MongoClient[dict[str, Any]], db: Db
) -> None:
    db.drafts.insert_one({"_id": "seed"})
    with db.drafts.watch(max_await_time_ms=AWAIT_MS) as stream:
        with client.start_session() as session:
            session.start_transaction()
            db.drafts.insert_one({"_id": "never"}, session=session)
            db.drafts.update_one({"_id": "seed"}, {"$set": {"x": 1}}, session=session)
            session.abort_transaction()
        sentinel = {"_id": "sentinel"}
        db.drafts.insert_one(sentinel)
        expect_sentinel(stream, sentinel)
    assert db.drafts.find_one({"_id": "never"}) is None


# -- TTL ---------------------------------------------------------------------------------------


def test_ttl_deletes_appear_as_delete_events(db: Db) -> None:
    db.sessions.create_index("expiresAt", expireAfterSeconds=0)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    with db.sessions.watch(max_await_time_ms=1000) as stream:
        db.sessions.insert_one({"_id": "stale", "expiresAt": past})
        insert = next_change(stream)
        delete = next_change(stream, timeout=TTL_DEADLINE_S)
    assert insert["operationType"] == "insert"
    assert delete["operationType"] == "delete"
    assert delete["documentKey"] == {"_id": "stale"}
    assert db.sessions.count_documents({}) == 0


# -- bounded history (embedded server with a tiny --oplog-size-mb) -----------------------------


def test_history_bounded_by_oplog_size(fresh_server: ServerFactory) -> None:
    server = fresh_server(in_memory=True, oplog_size_mb=0.05)  # 50 KiB of history
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    try:
        coll = client.hist.items
        coll.insert_one({"_id": "seed"})
        lagging = coll.watch(max_await_time_ms=AWAIT_MS)
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            coll.insert_one({"_id": "first"})
            first = next_change(stream)
        with client.start_session() as session:
            coll.insert_one({"_id": "marker"}, session=session)
            early = session.operation_time
        assert isinstance(early, Timestamp)
        payload = "x" * 1024
        for start in range(0, 200, 20):
            coll.insert_many([{"_id": i, "pad": payload} for i in range(start, start + 20)])

        with pytest.raises(OperationFailure) as info:
            coll.watch(resume_after=first["_id"])
        assert info.value.code == 286
        with pytest.raises(OperationFailure) as info:
            coll.watch(start_at_operation_time=early)
        assert info.value.code == 286
        # A stream that fell behind the history fails on its next getMore.
        with pytest.raises(OperationFailure) as info:
            lagging.try_next()
        assert info.value.code == 286
        assert info.value.has_error_label("NonResumableChangeStreamError")
        lagging.close()

        # Recent history is still there.
        with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
            coll.insert_one({"_id": "recent-1"})
            coll.insert_one({"_id": "recent-2"})
            recent = next_change(stream)
        with coll.watch(resume_after=recent["_id"], max_await_time_ms=AWAIT_MS) as resumed:
            assert next_change(resumed)["documentKey"] == {"_id": "recent-2"}
    finally:
        client.close()


@pytest.mark.embedded_only
def test_token_from_another_log_is_rejected(db: Db) -> None:
    # A well-formed token for a position this server's log never had (e.g. from an earlier
    # in-memory server) must not silently start somewhere else.
    foreign = {"_data": "00000001000000010000000000000000000FFFFF00"}
    with pytest.raises(OperationFailure) as info:
        db.items.watch(resume_after=foreign)
    assert info.value.code == 280
    with pytest.raises(OperationFailure) as info:
        db.items.watch(resume_after={"_data": "nonsense"})
    assert info.value.code == 260
