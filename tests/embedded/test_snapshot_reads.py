"""Snapshot reads: ``readConcern: {level: "snapshot"}`` and transactions read one point in time.

MongoDB 7.0 (manual, "Read Concern "snapshot""): outside transactions ``find``, ``aggregate``
and ``distinct`` accept level snapshot ("All other read commands prohibit "snapshot""), with an
optional ``atClusterTime`` (a Timestamp; one later than the latest cluster time is
``InvalidOptions`` (72), one older than ``minSnapshotHistoryWindowInSeconds`` (300 s) is
``SnapshotTooOld`` (239)); the cursor reports its time as ``cursor.atClusterTime`` and getMores
keep reading that snapshot. A transaction reads a snapshot taken at its first operation
("Transactions": "operations in the transaction read from the same snapshot"), so writes
committed by others afterwards stay invisible to it; writing a document changed since is a
``WriteConflict`` (112) that aborts it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern
from raw_wire import RawConnection, RawSession
from support import ServerFactory

from runtime.embedded.process import EmbeddedServer

Doc = dict[str, Any]
SNAPSHOT = {"level": "snapshot"}


def _connect(server: EmbeddedServer) -> MongoClient[Doc]:
    """A client of ``server`` (for reading results)."""
    return MongoClient(server.uri)


def _seed(db: Database[Doc], name: str, count: int = 3) -> Timestamp:
    """Insert documents 1..count; return the cluster time after them."""
    reply = db.command({"insert": name, "documents": [{"_id": i, "v": i}
                                                       for i in range(1, count + 1)]})
    ts: Timestamp = reply["operationTime"]
    return ts


def _change_everything(db: Database[Doc], name: str) -> None:
    """Another client's writes: insert 99, update 1, delete 2."""
    coll = db[name]
    coll.insert_one({"_id": 99, "v": 99})
    coll.update_one({"_id": 1}, {"$set": {"v": 100}})
    coll.delete_one({"_id": 2})


OLD_STATE = [{"_id": 1, "v": 1}, {"_id": 2, "v": 2}, {"_id": 3, "v": 3}]
NEW_STATE = [{"_id": 1, "v": 100}, {"_id": 3, "v": 3}, {"_id": 99, "v": 99}]


# -- transactions ------------------------------------------------------------------------------


@pytest.mark.parametrize("read_concern", [None, "snapshot", "majority", "local"])
def test_transaction_does_not_see_writes_committed_after_its_snapshot(
        client: MongoClient[Doc], db: Database[Doc], read_concern: str | None) -> None:
    """Whatever the level, a transaction's reads come from the snapshot taken at its first
    operation: another client's insert, update and delete committed later are invisible."""
    _seed(db, "txn_view")
    coll = db.txn_view
    with client.start_session() as session:
        concern = ReadConcern(read_concern) if read_concern else None
        with session.start_transaction(read_concern=concern):
            assert list(coll.find({}, session=session).sort("_id", 1)) == OLD_STATE
            _change_everything(db, "txn_view")
            assert list(coll.find({}, session=session).sort("_id", 1)) == OLD_STATE
            assert coll.find_one({"_id": 2}, session=session) == {"_id": 2, "v": 2}
            assert coll.find_one({"_id": 99}, session=session) is None
            assert coll.count_documents({}, session=session) == 3
            assert sorted(coll.distinct("v", session=session)) == [1, 2, 3]
            assert [d["_id"] for d in coll.aggregate([{"$sort": {"_id": 1}}],
                                                     session=session)] == [1, 2, 3]
    assert list(coll.find().sort("_id", 1)) == NEW_STATE


def test_transaction_sees_its_own_writes_over_its_snapshot(client: MongoClient[Doc],
                                                          db: Database[Doc]) -> None:
    """The transaction's own writes overlay its snapshot; others' later writes do not."""
    _seed(db, "txn_own")
    coll = db.txn_own
    with client.start_session() as session, session.start_transaction():
        coll.insert_one({"_id": 50, "v": 50}, session=session)
        db.txn_own.insert_one({"_id": 60, "v": 60})  # another client's
        assert [d["_id"] for d in coll.find({}, session=session).sort("_id", 1)] == [1, 2, 3,
                                                                                     50]
    assert [d["_id"] for d in coll.find().sort("_id", 1)] == [1, 2, 3, 50, 60]


def test_writing_a_document_changed_after_the_snapshot_is_a_write_conflict(
        client: MongoClient[Doc], db: Database[Doc]) -> None:
    """Updating a document another client changed after the transaction's snapshot fails with
    WriteConflict (112, TransientTransactionError) and the transaction is aborted."""
    _seed(db, "txn_conflict")
    coll = db.txn_conflict
    with client.start_session() as session:
        session.start_transaction()
        assert coll.find_one({"_id": 1}, session=session) == {"_id": 1, "v": 1}
        coll.update_one({"_id": 1}, {"$inc": {"v": 10}})  # another client's, committed
        with pytest.raises(OperationFailure) as caught:
            coll.update_one({"_id": 1}, {"$inc": {"v": 1}}, session=session)
        assert caught.value.code == 112
        assert caught.value.has_error_label("TransientTransactionError")
        with pytest.raises(OperationFailure) as aborted:
            session.commit_transaction()
        assert aborted.value.code == 251
    assert coll.find_one({"_id": 1}) == {"_id": 1, "v": 11}


def test_concurrent_writes_to_one_document_still_conflict(client: MongoClient[Doc],
                                                          db: Database[Doc]) -> None:
    """As before snapshots: a write to a document another open transaction wrote is a
    WriteConflict (112)."""
    _seed(db, "txn_both")
    coll = db.txn_both
    with client.start_session() as first, client.start_session() as second:
        first.start_transaction()
        second.start_transaction()
        coll.update_one({"_id": 3}, {"$set": {"by": "first"}}, session=first)
        with pytest.raises(OperationFailure) as caught:
            coll.update_one({"_id": 3}, {"$set": {"by": "second"}}, session=second)
        assert caught.value.code == 112
        first.commit_transaction()
    assert coll.find_one({"_id": 3}) == {"_id": 3, "v": 3, "by": "first"}


def test_transaction_at_cluster_time_reads_that_time(mongodb_uri: str,
                                                     db: Database[Doc]) -> None:
    """startTransaction with readConcern {level: snapshot, atClusterTime: T} reads the state at
    T (manual, "Read Concern "snapshot"": atClusterTime in transactions); a future T fails the
    statement with InvalidOptions (72) and the transaction does not exist (251 on abort)."""
    at = _seed(db, "txn_at")
    _change_everything(db, "txn_at")
    with RawConnection(mongodb_uri) as conn:
        raw = RawSession(conn, db.name)
        reply = raw.in_txn({"find": "txn_at", "sort": {"_id": 1},
                            "readConcern": {**SNAPSHOT, "atClusterTime": at}}, 1, start=True)
        assert reply["cursor"]["firstBatch"] == OLD_STATE
        assert raw.commit(1)["ok"] == 1.0
        future = Timestamp(int(time.time()) + 3600, 1)
        failed = raw.in_txn({"find": "txn_at",
                             "readConcern": {**SNAPSHOT, "atClusterTime": future}}, 2, start=True)
        assert failed["ok"] == 0 and failed["code"] == 72
        assert raw.abort(2)["code"] == 251


# -- snapshot reads outside transactions -------------------------------------------------------


def test_find_at_cluster_time_sees_the_state_at_that_time(db: Database[Doc]) -> None:
    """find with readConcern snapshot + atClusterTime T returns the documents as of T
    (deleted ones included, later inserts excluded); the cursor reports atClusterTime T."""
    at = _seed(db, "at_time")
    _change_everything(db, "at_time")
    reply = db.command({"find": "at_time", "sort": {"_id": 1},
                        "readConcern": {**SNAPSHOT, "atClusterTime": at}})
    assert reply["cursor"]["firstBatch"] == OLD_STATE
    assert reply["cursor"]["atClusterTime"] == at
    filtered = db.command({"find": "at_time", "filter": {"v": {"$gte": 2}}, "sort": {"_id": 1},
                           "readConcern": {**SNAPSHOT, "atClusterTime": at}})
    assert filtered["cursor"]["firstBatch"] == OLD_STATE[1:]
    distinct = db.command({"distinct": "at_time", "key": "v",
                           "readConcern": {**SNAPSHOT, "atClusterTime": at}})
    assert distinct["values"] == [1, 2, 3]
    assert distinct["atClusterTime"] == at
    agg = db.command({"aggregate": "at_time", "pipeline": [{"$sort": {"_id": 1}}],
                      "cursor": {}, "readConcern": {**SNAPSHOT, "atClusterTime": at}})
    assert agg["cursor"]["firstBatch"] == OLD_STATE
    assert agg["cursor"]["atClusterTime"] == at
    latest = db.command({"find": "at_time", "sort": {"_id": 1}, "readConcern": SNAPSHOT})
    assert latest["cursor"]["firstBatch"] == NEW_STATE
    assert "atClusterTime" in latest["cursor"]
    plain = db.command({"find": "at_time"})
    assert "atClusterTime" not in plain["cursor"]


def test_get_more_keeps_reading_the_same_snapshot(db: Database[Doc]) -> None:
    """A snapshot cursor's getMores read its snapshot: writes committed between batches are
    invisible (the deleted documents still come, the inserted ones do not)."""
    db.command({"insert": "getmore_snap", "documents": [{"_id": i} for i in range(10)]})
    reply = db.command({"find": "getmore_snap", "sort": {"_id": 1}, "batchSize": 3,
                        "readConcern": SNAPSHOT})
    cursor = reply["cursor"]
    seen = [d["_id"] for d in cursor["firstBatch"]]
    db.getmore_snap.delete_many({"_id": {"$gte": 5}})
    db.getmore_snap.insert_one({"_id": 100})
    db.getmore_snap.update_one({"_id": 4}, {"$set": {"late": True}})
    more = []
    cursor_id = cursor["id"]
    while cursor_id:
        batch = db.command({"getMore": cursor_id, "collection": "getmore_snap",
                            "batchSize": 3})["cursor"]
        more.extend(batch["nextBatch"])
        cursor_id = batch["id"]
    assert seen + [d["_id"] for d in more] == list(range(10))
    assert all("late" not in d for d in more)


@pytest.mark.parametrize("sort", [{"_id": 1}, None], ids=["index_scan", "collection_scan"])
def test_long_snapshot_read_across_get_mores_ignores_concurrent_writes(
        db: Database[Doc], sort: dict[str, int] | None) -> None:
    """A snapshot cursor over more documents than one slice of a long read returns exactly the
    documents of its snapshot, whatever is deleted, inserted or updated between getMores."""
    name = f"long_snap_{'sorted' if sort else 'natural'}"
    db[name].insert_many([{"_id": i, "v": 0} for i in range(1500)])
    command: dict[str, Any] = {"find": name, "batchSize": 100, "readConcern": SNAPSHOT}
    if sort:
        command["sort"] = sort
    cursor = db.command(command)["cursor"]
    got = list(cursor["firstBatch"])
    db[name].delete_many({"_id": {"$lt": 700}})
    db[name].update_many({}, {"$set": {"v": 1}})
    db[name].insert_many([{"_id": 5000 + i} for i in range(50)])
    cursor_id = cursor["id"]
    while cursor_id:
        batch = db.command({"getMore": cursor_id, "collection": name})["cursor"]
        got.extend(batch["nextBatch"])
        cursor_id = batch["id"]
    ids = [d["_id"] for d in got]
    assert sorted(ids) == list(range(1500))
    if sort:
        assert ids == list(range(1500))
    assert all(d["v"] == 0 for d in got)


def test_pymongo_snapshot_session_reads_one_point_in_time(client: MongoClient[Doc],
                                                          db: Database[Doc]) -> None:
    """PyMongo's snapshot session (snapshot=True) sends atClusterTime from the first reply on:
    later reads in it ignore writes committed after its first read."""
    _seed(db, "snap_session")
    with client.start_session(snapshot=True) as session:
        coll = db.snap_session
        assert list(coll.find({}, session=session).sort("_id", 1)) == OLD_STATE
        _change_everything(db, "snap_session")
        assert list(coll.find({}, session=session).sort("_id", 1)) == OLD_STATE
        assert sorted(coll.distinct("v", session=session)) == [1, 2, 3]


def test_at_cluster_time_in_the_future_is_invalid_options(db: Database[Doc]) -> None:
    """atClusterTime later than the latest cluster time: InvalidOptions (72)."""
    future = Timestamp(int(time.time()) + 3600, 1)
    with pytest.raises(OperationFailure) as caught:
        db.command({"find": "future", "readConcern": {**SNAPSHOT, "atClusterTime": future}})
    assert caught.value.code == 72


def test_at_cluster_time_older_than_the_history_window_is_snapshot_too_old(
        db: Database[Doc]) -> None:
    """atClusterTime older than minSnapshotHistoryWindowInSeconds (300 s): SnapshotTooOld
    (239)."""
    old = Timestamp(int(time.time()) - 3600, 1)
    with pytest.raises(OperationFailure) as caught:
        db.command({"find": "old", "readConcern": {**SNAPSHOT, "atClusterTime": old}})
    assert caught.value.code == 239


def test_at_cluster_time_needs_snapshot_level_and_a_timestamp(db: Database[Doc]) -> None:
    """atClusterTime with another level is InvalidOptions (72); not a Timestamp, TypeMismatch
    (14); snapshot on a command other than find/aggregate/distinct outside a transaction,
    InvalidOptions (72)."""
    now = db.command({"ping": 1})["operationTime"]
    for concern, code in (({"level": "local", "atClusterTime": now}, 72),
                          ({**SNAPSHOT, "atClusterTime": "bad"}, 14)):
        with pytest.raises(OperationFailure) as caught:
            db.command({"find": "rc", "readConcern": concern})
        assert caught.value.code == code
    with pytest.raises(OperationFailure) as count_caught:
        db.command({"count": "rc", "readConcern": SNAPSHOT})
    assert count_caught.value.code == 72


def test_snapshot_reads_before_a_restart_are_too_old(fresh_server: ServerFactory) -> None:
    """History is not kept across a restart: atClusterTime before it is SnapshotTooOld (239),
    a snapshot read at the latest time works."""
    server = fresh_server()
    with _connect(server) as first:
        at = _seed(first.snap_db, "restart")
        first.snap_db.restart.insert_one({"_id": 4, "v": 4})
    server.restart()
    with _connect(server) as second:
        with pytest.raises(OperationFailure) as caught:
            second.snap_db.command({"find": "restart",
                                    "readConcern": {**SNAPSHOT, "atClusterTime": at}})
        assert caught.value.code == 239
        reply = second.snap_db.command({"find": "restart", "readConcern": SNAPSHOT})
        assert len(reply["cursor"]["firstBatch"]) == 4


def test_history_past_the_window_is_dropped_and_its_readers_get_snapshot_too_old(
        fresh_server: ServerFactory) -> None:
    """History is kept for minSnapshotHistoryWindowInSeconds (setParameter; 300 by default):
    with it at 1 s, a write more than a second old is forgotten at the next write, so a read at
    its time is SnapshotTooOld (239), and so is the next read of a transaction whose snapshot
    still needed it (239, TransientTransactionError, as mongod labels snapshot errors)."""
    server = fresh_server(in_memory=True)
    with _connect(server) as client:
        db = client.window_db
        coll = db.items
        _seed(db, "items")
        assert client.admin.command({"getParameter": 1, "minSnapshotHistoryWindowInSeconds": 1}
                                    )["minSnapshotHistoryWindowInSeconds"] == 300
        with client.start_session() as session:
            session.start_transaction()
            assert coll.count_documents({}, session=session) == 3
            written = db.command({"insert": "items", "documents": [{"_id": 10}]})
            client.admin.command({"setParameter": 1, "minSnapshotHistoryWindowInSeconds": 1})
            deadline = time.monotonic() + 30
            while True:  # poll (no sleep) until the write is older than the window
                try:
                    db.command({"find": "items", "readConcern": {
                        **SNAPSHOT, "atClusterTime": written["operationTime"]}})
                except OperationFailure as exc:
                    assert exc.code == 239
                    break
                assert time.monotonic() < deadline, "the window never passed"
            coll.insert_one({"_id": 11})  # drops the history older than the window
            with pytest.raises(OperationFailure) as caught:
                coll.count_documents({}, session=session)
            assert caught.value.code == 239
            assert caught.value.has_error_label("TransientTransactionError")
            session.abort_transaction()
        assert coll.count_documents({}) == 5
