"""A write that breaks a storage rule fails with MongoDB's error and changes nothing (issue 10,
item 2).

Reproducer: ``$rename`` to a field name containing a NUL byte used to change the document in
memory and then fail writing the log ("internal error"); every later find on the collection and
every checkpoint failed, and a restart silently reverted the document. Now each such statement
is refused before anything changes: the collection, its indexes, the change stream, the
write-ahead log and, after a restart, the data are exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure
from support import ServerFactory

from runtime.embedded.process import EmbeddedServer

pytestmark = pytest.mark.embedded_only

Doc = dict[str, Any]
Client = MongoClient[Doc]
Write = Callable[[Collection[Doc]], Any]

BAD_VALUE = 2
OVERFLOW = 15
BSON_OBJECT_TOO_LARGE = 10334
MIB = 1024 * 1024


def _nested(levels: int) -> Doc:
    """A document nesting ``levels`` levels (itself is level 1), as MongoDB's tests build it."""
    doc: Doc = {"a": 1}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


def _pairs_to_object(name: str) -> Doc:
    return {"$arrayToObject": {"$literal": [[name, 1]]}}


# Each case: a write statement that MongoDB refuses, and the code it refuses it with.
CASES: dict[str, tuple[Write, int]] = {
    # The reproducer: MongoDB's BSON names are C strings, a NUL cannot be stored in one.
    "rename_to_nul": (lambda c: c.update_one({"_id": 1}, {"$rename": {"a": "b\x00c"}}),
                      BAD_VALUE),
    "find_and_modify_rename_to_nul": (
        lambda c: c.find_one_and_update({"_id": 1}, {"$rename": {"a": "x\x00"}}), BAD_VALUE),
    "pipeline_set_nul_name": (
        lambda c: c.update_one({"_id": 1}, [{"$set": {"o": _pairs_to_object("k\x00")}}]),
        BAD_VALUE),
    "pipeline_replace_with_nul_name": (
        lambda c: c.update_one({"_id": 1}, [{"$replaceWith": {
            "$mergeObjects": [{"_id": 1}, _pairs_to_object("k\x00")]}}]), BAD_VALUE),
    "upsert_with_nul_name": (
        lambda c: c.update_one({"_id": 99}, [{"$set": {"o": _pairs_to_object("\x00")}}],
                               upsert=True), BAD_VALUE),
    # storage_validation.cpp: "Document exceeds maximum nesting depth of 180" (Overflow).
    "set_too_deep": (lambda c: c.update_one({"_id": 1}, {"$set": {"deep": _nested(180)}}),
                     OVERFLOW),
    # insert.cpp: "cannot insert document because it exceeds 180 levels of nesting" (Overflow).
    "insert_too_deep": (lambda c: c.insert_one({"_id": 2, "deep": _nested(180)}), OVERFLOW),
    "upsert_too_deep": (lambda c: c.update_one({"_id": 3}, {"$set": {"deep": _nested(180)}},
                                               upsert=True), OVERFLOW),
    # "Resulting document after update is larger than 16777216" (BSONObjectTooLarge).
    "update_result_over_16_mib": (
        lambda c: c.update_one({"_id": 1}, [{"$set": {"big": {"$concat": [
            "$blob", "$blob"]}}}]), BSON_OBJECT_TOO_LARGE),
    "find_and_modify_result_over_16_mib": (
        lambda c: c.find_one_and_update({"_id": 1}, [{"$set": {"big": {"$concat": [
            "$blob", "$blob"]}}}]), BSON_OBJECT_TOO_LARGE),
}


@pytest.fixture
def server(fresh_server: ServerFactory) -> EmbeddedServer:
    return fresh_server()


@pytest.fixture
def client(server: EmbeddedServer) -> Iterator[Client]:
    mongo: Client = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    yield mongo
    mongo.close()


def _seed(coll: Collection[Doc]) -> None:
    coll.insert_many([
        {"_id": 1, "a": 1, "blob": "x" * (9 * MIB)},
        {"_id": 10, "a": 10, "tags": ["p", "q"]},
    ])
    coll.create_index("a", name="a_1")
    coll.create_index("tags", name="tags_1")


def _state(coll: Collection[Doc]) -> tuple[list[Doc], list[Doc], list[Doc]]:
    """Documents, and what two index scans (hinted) return: all must stay as they were."""
    docs = list(coll.find({}, {"blob": 0}, sort=[("_id", 1)]))
    by_a = list(coll.find({"a": {"$gte": 0}}, {"blob": 0}).hint("a_1"))
    by_tags = list(coll.find({"tags": "p"}, {"blob": 0}).hint("tags_1"))
    return docs, by_a, by_tags


def _wal_sizes(dbpath: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in dbpath.glob("wal.*.log")}


def _log_grew(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Segments that hold more bytes than before. A background checkpoint may delete old
    segments and open an empty new one meanwhile; neither is a record of the refused write."""
    return {name: (before.get(name, 0), size) for name, size in after.items()
            if size > before.get(name, 0)}


def _refused(write: Write, coll: Collection[Doc]) -> OperationFailure:
    with pytest.raises(OperationFailure) as caught:
        write(coll)
    return caught.value


def test_refused_writes_change_nothing(server: EmbeddedServer, client: Client) -> None:
    """Each refused statement answers MongoDB's code (never InternalError 1) and leaves the
    documents, indexes, change stream and write-ahead log exactly as they were; finds and the
    checkpoint keep working and a restart shows the same data.

    The cases share one server (one collection each) so that one restart checks them all."""
    assert server.dbpath is not None
    dbpath = Path(server.dbpath)
    expected: dict[str, tuple[list[Doc], list[Doc], list[Doc]]] = {}
    for case, (write, code) in sorted(CASES.items()):
        coll = client.app[case]
        _seed(coll)
        before = expected[case] = _state(coll)
        wal_before = _wal_sizes(dbpath)
        with coll.watch(max_await_time_ms=100) as stream:
            error = _refused(write, coll)
            assert error.code == code, (case, error.details)
            assert _state(coll) == before, case
            assert not _log_grew(wal_before, _wal_sizes(dbpath)), case
            coll.insert_one({"_id": "marker"})  # the next event is this one: nothing before it
            event = stream.next()
            assert (event["operationType"], event["documentKey"]) == (
                "insert", {"_id": "marker"}), case
        coll.delete_one({"_id": "marker"})
    client.close()
    assert server.stop() == 0  # the final checkpoint succeeds
    server.restart()
    with MongoClient(server.uri, serverSelectionTimeoutMS=10_000) as again:
        for case, before in expected.items():
            assert _state(again.app[case]) == before, case


def test_failed_statement_in_transaction_leaves_nothing(client: Client) -> None:
    """Inside a transaction the refused statement aborts it (BadValue), nothing is committed."""
    coll = client.app.items
    _seed(coll)
    before = _state(coll)
    with client.start_session() as session:
        session.start_transaction()
        coll.update_one({"_id": 10}, {"$set": {"a": 11}}, session=session)
        with pytest.raises(OperationFailure) as caught:
            coll.update_one({"_id": 1}, {"$rename": {"a": "n\x00"}}, session=session)
        assert caught.value.code == BAD_VALUE
        session.abort_transaction()
    assert _state(coll) == before


def test_ordered_batch_keeps_statements_before_the_refused_one(client: Client) -> None:
    """As in MongoDB, an ordered batch stops at the refused statement; earlier ones stay."""
    coll = client.app.batch
    with pytest.raises(OperationFailure) as caught:
        coll.insert_many([{"_id": 1}, {"_id": 2, "deep": _nested(181)}, {"_id": 3}])
    assert caught.value.details["writeErrors"][0]["code"] == OVERFLOW
    assert caught.value.details["writeErrors"][0]["index"] == 1
    assert [d["_id"] for d in coll.find()] == [1]


def test_document_at_the_depth_limit_is_stored(client: Client) -> None:
    """MongoDB stores a document nested exactly 180 levels (``getMaxDepthForUserStorage``)."""
    coll = client.app.depth
    coll.insert_one({"_id": 1, **_nested(179)})
    coll.update_one({"_id": 1}, {"$set": {"b": _nested(179)}})
    assert coll.count_documents({}) == 1
