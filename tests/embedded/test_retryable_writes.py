"""Retryable writes: a repeated ``txnNumber`` returns the recorded result and never applies twice.

PyMongo replaces any ``lsid`` in a command with its own session's, so commands with chosen
``lsid``/``txnNumber`` go either through ``db.command(..., session=s)`` with an explicit
``txnNumber`` (PyMongo then keeps it) or through a raw connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson.int64 import Int64
from failpoint_helpers import CommandRecorder, fail_point
from pymongo import AsyncMongoClient, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import AutoReconnect, OperationFailure, WriteConcernError
from raw_wire import RawConnection, RawSession

RETRYABLE = "RetryableWriteError"


@pytest.fixture
def items(db: Database[dict[str, Any]]) -> Collection[dict[str, Any]]:
    coll = db.items
    coll.insert_one({"_id": "counter", "n": 0})
    return coll


@pytest.fixture
def raw(mongodb_uri: str, db: Database[dict[str, Any]]) -> Iterator[RawSession]:
    with RawConnection(mongodb_uri) as conn:
        yield RawSession(conn, db.name)


@pytest.fixture
def app_client(mongodb_uri: str, request: pytest.FixtureRequest) -> Iterator[
        tuple[MongoClient[dict[str, Any]], CommandRecorder, str]]:
    """A client with its own appName (fail points target only it) and a command recorder."""
    app = f"retry-{request.node.name}"[:100]
    recorder = CommandRecorder()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, appname=app,
                                                      event_listeners=[recorder])
    try:
        yield client, recorder, app
    finally:
        client.close()


def _strip(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("operationTime", "$clusterTime")}


# -- the same txnNumber twice -------------------------------------------------------------------


def test_repeated_insert_returns_the_recorded_reply(
        raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    command = {"insert": "items", "documents": [{"_id": "a"}, {"_id": "b"}]}
    first = raw.run(command, 1)
    assert first["ok"] == 1 and first["n"] == 2
    retried = raw.run(command, 1)
    # Not a duplicate-key error: the recorded result, and nothing applied again.
    assert _strip(retried) == _strip(first)
    assert items.count_documents({"_id": {"$in": ["a", "b"]}}) == 2


def test_repeated_update_is_applied_once(
        raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    command = {"update": "items",
               "updates": [{"q": {"_id": "counter"}, "u": {"$inc": {"n": 1}}}]}
    first = raw.run(command, 1)
    assert (first["n"], first["nModified"]) == (1, 1)
    for _ in range(3):
        assert _strip(raw.run(command, 1)) == _strip(first)
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 1}
    # A new txnNumber is a new write.
    raw.run(command, 2)
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 2}


def test_repeated_find_and_modify_returns_the_first_result(
        raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    command = {"findAndModify": "items", "query": {"_id": "counter"},
               "update": {"$inc": {"n": 5}}, "new": True}
    first = raw.run(command, 3)
    assert first["value"] == {"_id": "counter", "n": 5}
    retried = raw.run(command, 3)
    assert retried["value"] == {"_id": "counter", "n": 5}
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 5}


def test_repeated_delete_and_upsert(raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    upsert = {"update": "items", "updates": [{"q": {"_id": "up"}, "u": {"$inc": {"n": 1}},
                                              "upsert": True}]}
    first = raw.run(upsert, 1)
    assert first["upserted"] == [{"index": 0, "_id": "up"}]
    assert raw.run(upsert, 1)["upserted"] == [{"index": 0, "_id": "up"}]
    assert items.find_one({"_id": "up"}) == {"_id": "up", "n": 1}
    delete = {"delete": "items", "deletes": [{"q": {"_id": "up"}, "limit": 1}]}
    assert raw.run(delete, 2)["n"] == 1
    assert raw.run(delete, 2)["n"] == 1  # the recorded count, not 0
    assert items.find_one({"_id": "up"}) is None


def test_explicit_txn_number_through_pymongo(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    # PyMongo may hand out a pooled server session that already used small txnNumbers.
    command = {"update": "items", "updates": [{"q": {"_id": "counter"},
                                               "u": {"$inc": {"n": 1}}}],
               "txnNumber": Int64(1_000_000)}
    with client.start_session() as session:
        db = items.database
        first = db.command(command, session=session)
        retried = db.command(command, session=session)
        assert (first["nModified"], retried["nModified"]) == (1, 1)
        with pytest.raises(OperationFailure) as info:
            db.command({**command, "txnNumber": Int64(999_999)}, session=session)
        assert info.value.code == 225
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 1}


def test_a_failed_attempt_can_be_retried(
        raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    items.insert_one({"_id": "taken"})
    command = {"insert": "items", "documents": [{"_id": "taken"}]}
    first = raw.run(command, 1)
    assert first["writeErrors"][0]["code"] == 11000
    # The recorded reply (with its write error) comes back.
    assert raw.run(command, 1)["writeErrors"][0]["code"] == 11000


# -- older txnNumbers ---------------------------------------------------------------------------


def test_lower_txn_number_is_transaction_too_old(
        raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    assert raw.run({"insert": "items", "documents": [{"_id": 1}]}, 5)["ok"] == 1
    older = raw.run({"insert": "items", "documents": [{"_id": 2}]}, 4)
    assert older["ok"] == 0 and older["code"] == 225
    assert RETRYABLE not in older.get("errorLabels", [])
    assert items.find_one({"_id": 2}) is None


def test_retrying_a_superseded_write_is_transaction_too_old(raw: RawSession) -> None:
    command = {"insert": "items", "documents": [{"_id": 1}]}
    raw.run(command, 1)
    raw.run({"insert": "items", "documents": [{"_id": 2}]}, 2)
    assert raw.run(command, 1)["code"] == 225


def test_txn_number_rules(raw: RawSession, mongodb_uri: str) -> None:
    # Only retryable writes and transactions accept a txnNumber.
    find = raw.run({"find": "items"}, 1)
    assert find["ok"] == 0
    # A txnNumber needs an lsid.
    no_session = raw.conn.command({"insert": "items", "documents": [{"_id": 1}],
                                   "txnNumber": Int64(1), "$db": raw.db})
    assert no_session["ok"] == 0
    bad_type = raw.conn.command({"insert": "items", "documents": [{"_id": 1}],
                                 "txnNumber": "one", "lsid": raw.lsid, "$db": raw.db})
    assert bad_type["ok"] == 0 and bad_type["code"] == 14


def test_sessions_are_independent(mongodb_uri: str, db: Database[dict[str, Any]]) -> None:
    with RawConnection(mongodb_uri) as conn:
        one, two = RawSession(conn, db.name), RawSession(conn, db.name)
        assert one.run({"insert": "items", "documents": [{"_id": 1}]}, 9)["n"] == 1
        assert two.run({"insert": "items", "documents": [{"_id": 2}]}, 1)["n"] == 1
        assert one.run({"insert": "items", "documents": [{"_id": 1}]}, 9)["n"] == 1
    assert db.items.count_documents({}) == 2


def test_retry_on_another_connection(mongodb_uri: str, db: Database[dict[str, Any]]) -> None:
    command = {"update": "items", "updates": [{"q": {"_id": "c"}, "u": {"$inc": {"n": 1}},
                                               "upsert": True}]}
    with RawConnection(mongodb_uri) as first:
        session = RawSession(first, db.name)
        assert session.run(command, 1)["ok"] == 1
    with RawConnection(mongodb_uri) as second:
        session.conn = second
        assert session.run(command, 1)["upserted"] == [{"index": 0, "_id": "c"}]
    assert db.items.find_one({"_id": "c"}) == {"_id": "c", "n": 1}


# -- PyMongo's automatic retry ------------------------------------------------------------------


def test_pymongo_retries_an_insert_after_a_dropped_connection(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    retrying, recorder, app = app_client
    coll = retrying[items.database.name].items
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["insert"], "closeConnection": True, "appName": app}):
        coll.insert_one({"_id": "once"})
    inserts = recorder.named("insert")
    assert len(inserts) == 2
    assert inserts[0]["txnNumber"] == inserts[1]["txnNumber"]
    assert inserts[0]["lsid"] == inserts[1]["lsid"]
    assert items.count_documents({"_id": "once"}) == 1


def test_write_applied_but_reply_lost_is_not_applied_again(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    """onPrimaryTransactionalWrite drops the connection after the write was applied: PyMongo's
    retry must get the recorded result instead of applying the $inc a second time."""
    retrying, recorder, _app = app_client
    coll = retrying[items.database.name].items
    with fail_point(client, "onPrimaryTransactionalWrite", {"times": 1},
                    {"closeConnection": True}):
        result = coll.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert len(recorder.named("update")) == 2
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 1}

    with fail_point(client, "onPrimaryTransactionalWrite", {"times": 1},
                    {"closeConnection": True}):
        doc = coll.find_one_and_update({"_id": "counter"}, {"$inc": {"n": 1}},
                                       return_document=ReturnDocument.AFTER)
    assert doc == {"_id": "counter", "n": 2}
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 2}

    with fail_point(client, "onPrimaryTransactionalWrite", {"times": 1},
                    {"closeConnection": True}):
        many = coll.insert_many([{"_id": f"m{i}"} for i in range(3)])
    assert len(many.inserted_ids) == 3
    assert items.count_documents({"_id": {"$regex": "^m"}}) == 3


def test_fail_before_commit_is_retried_and_applied_once(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    retrying, recorder, _app = app_client
    coll = retrying[items.database.name].items
    with fail_point(client, "onPrimaryTransactionalWrite", {"times": 1},
                    {"failBeforeCommitExceptionCode": 262}):  # ExceededTimeLimit: retryable
        coll.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
    failures = recorder.failures_of("update")
    assert len(failures) == 1 and RETRYABLE in failures[0]["errorLabels"]
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 1}


def test_server_labels_retryable_errors(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    retrying, recorder, app = app_client
    coll = retrying[items.database.name].items
    # A retryable code without explicit labels: the server adds RetryableWriteError.
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["insert"], "errorCode": 262, "appName": app}):
        coll.insert_one({"_id": "labelled"})
    (failure,) = recorder.failures_of("insert")
    assert failure["errorLabels"] == [RETRYABLE]
    assert len(recorder.named("insert")) == 2
    assert items.count_documents({"_id": "labelled"}) == 1

    # A non-retryable code: no label, no retry.
    recorder.clear()
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["insert"], "errorCode": 2, "appName": app}), \
            pytest.raises(OperationFailure) as info:
        coll.insert_one({"_id": "bad"})
    assert info.value.code == 2 and not info.value.has_error_label(RETRYABLE)
    assert len(recorder.named("insert")) == 1

    # Explicit errorLabels replace the computed ones: [] means "not retryable".
    recorder.clear()
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["insert"], "errorCode": 262, "errorLabels": [],
                     "appName": app}), pytest.raises(OperationFailure) as info:
        coll.insert_one({"_id": "unlabelled"})
    assert info.value.code == 262 and not info.value.has_error_label(RETRYABLE)
    assert len(recorder.named("insert")) == 1
    assert items.count_documents({"_id": {"$in": ["bad", "unlabelled"]}}) == 0


def test_only_one_retry(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    retrying, recorder, app = app_client
    coll = retrying[items.database.name].items
    with fail_point(client, "failCommand", {"times": 2},
                    {"failCommands": ["insert"], "closeConnection": True, "appName": app}), \
            pytest.raises(AutoReconnect):
        coll.insert_one({"_id": "never"})
    assert len(recorder.named("insert")) == 2
    assert items.count_documents({"_id": "never"}) == 0


def test_write_concern_error_from_fail_point(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    retrying, _recorder, app = app_client
    coll = retrying[items.database.name].items
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["insert"], "appName": app,
                     "writeConcernError": {"code": 100, "errmsg": "not enough data-bearing "
                                           "nodes"}}), pytest.raises(WriteConcernError) as info:
        coll.insert_one({"_id": "wce"})
    assert info.value.code == 100
    assert items.count_documents({"_id": "wce"}) == 1  # the write itself happened


async def test_async_client_retries_once(
        mongodb_uri: str, client: MongoClient[dict[str, Any]],
        items: Collection[dict[str, Any]]) -> None:
    app = "retry-async"
    recorder = CommandRecorder()
    retrying: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_uri, appname=app, event_listeners=[recorder])
    coll = retrying[items.database.name].items
    try:
        with fail_point(client, "onPrimaryTransactionalWrite", {"times": 1},
                        {"closeConnection": True}):
            await coll.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
        with fail_point(client, "failCommand", {"times": 1},
                        {"failCommands": ["insert"], "closeConnection": True,
                         "appName": app}):
            await coll.insert_one({"_id": "async"})
    finally:
        await retrying.close()
    assert len(recorder.named("update")) == 2
    assert len(recorder.named("insert")) == 2
    assert items.find_one({"_id": "counter"}) == {"_id": "counter", "n": 1}
    assert items.count_documents({"_id": "async"}) == 1
