"""Each document written by one command gets its own cluster time, as mongod's oplog gives it.

mongod writes one oplog entry (with its own optime) per inserted, updated or deleted document,
even within one ``insert``/``update``/``delete`` command, so change events of a batch carry
distinct, increasing ``clusterTime`` values and ``startAtOperationTime`` between two of them
replays only the later ones (manual: "Change Events", ``clusterTime``: "The timestamp from the
oplog entry associated with the event"; "Change Streams", ``startAtOperationTime``). The reply's
``operationTime`` is the last write's. A transaction commits as one ``applyOps`` oplog entry: its
events share one ``clusterTime`` (manual, "Change Events": "events ... from the same transaction
share the same clusterTime").
"""

from __future__ import annotations

from typing import Any

from bson.timestamp import Timestamp
from change_stream_support import changes, expect_sentinel
from pymongo import MongoClient
from pymongo.database import Database

Doc = dict[str, Any]


def _key(ts: Timestamp) -> tuple[int, int]:
    return ts.time, ts.inc


def test_insert_many_gives_each_document_its_own_cluster_time(db: Database[Doc]) -> None:
    """insert of 3 documents: 3 distinct increasing clusterTimes, operationTime the last."""
    coll = db.optimes
    with coll.watch(max_await_time_ms=500) as stream:
        reply = db.command({"insert": "optimes", "documents": [{"_id": i} for i in (1, 2, 3)]})
        events = changes(stream, 3)
    times = [e["clusterTime"] for e in events]
    assert [e["documentKey"]["_id"] for e in events] == [1, 2, 3]
    assert _key(times[0]) < _key(times[1]) < _key(times[2])
    assert reply["operationTime"] == times[2]


def test_stream_started_between_two_inserts_of_one_batch_sees_only_the_later(
        db: Database[Doc]) -> None:
    """startAtOperationTime = the 2nd insert's clusterTime replays documents 2 and 3 only."""
    coll = db.optimes_start
    with coll.watch(max_await_time_ms=500) as stream:
        coll.insert_many([{"_id": i} for i in (1, 2, 3)])
        second = changes(stream, 3)[1]["clusterTime"]
    with coll.watch(start_at_operation_time=second, max_await_time_ms=500) as stream:
        assert [e["documentKey"]["_id"] for e in changes(stream, 2)] == [2, 3]
        coll.insert_one({"_id": "sentinel"})
        expect_sentinel(stream, {"_id": "sentinel"})


def test_multi_update_and_multi_delete_give_each_document_its_own_cluster_time(
        db: Database[Doc]) -> None:
    """update_many / delete_many over 3 documents: one clusterTime per document (mongod logs
    one oplog entry per document)."""
    coll = db.optimes_multi
    coll.insert_many([{"_id": i, "n": 0} for i in (1, 2, 3)])
    with coll.watch(max_await_time_ms=500) as stream:
        coll.update_many({}, {"$inc": {"n": 1}})
        updates = changes(stream, 3)
        coll.delete_many({})
        deletes = changes(stream, 3)
    for events, kind in ((updates, "update"), (deletes, "delete")):
        assert [e["operationType"] for e in events] == [kind] * 3
        times = [_key(e["clusterTime"]) for e in events]
        assert times == sorted(set(times)), times


def test_transaction_events_share_one_cluster_time(client: MongoClient[Doc],
                                                   db: Database[Doc]) -> None:
    """A committed transaction is one applyOps oplog entry: all its events share clusterTime,
    each with its own resume token."""
    coll = db.optimes_txn
    coll.insert_one({"_id": 0})
    with coll.watch(max_await_time_ms=500) as stream:
        with client.start_session() as session, session.start_transaction():
            coll.insert_many([{"_id": i} for i in (1, 2, 3)], session=session)
        events = changes(stream, 3)
    assert len({_key(e["clusterTime"]) for e in events}) == 1
    assert len({e["_id"]["_data"] for e in events}) == 3
    assert all("txnNumber" in e and "lsid" in e for e in events)
