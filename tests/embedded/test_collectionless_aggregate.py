"""Collection-less aggregation (``{aggregate: 1}``) through PyMongo: ``$documents``,
``$currentOp``, ``$listLocalSessions`` and the ``currentOp`` command.

Each test names the MongoDB 7.0 manual page or mongod's error code it checks (jstests
aggregation/sources/documents.js for ``$documents``); they hold against a real MongoDB 7.0
replica set started with test commands enabled (for the ``failCommand`` fail point).
"""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Binary, Int64
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure
from support import wait_until

Doc = dict[str, Any]
Db = Database[Doc]

INVALID_NAMESPACE = 73
FAILED_TO_PARSE = 9
UNKNOWN_FIELD = 40415


def _code(call: Any) -> int | None:
    with pytest.raises(OperationFailure) as caught:
        call()
    return caught.value.code


@pytest.fixture
def app_client(mongodb_uri: str) -> Iterator[MongoClient[Doc]]:
    """A second client with its own, unique application name."""
    mongo: MongoClient[Doc] = MongoClient(mongodb_uri, appname=f"h2-{uuid.uuid4().hex[:8]}")
    try:
        yield mongo
    finally:
        mongo.close()


# -- $documents ---------------------------------------------------------------------------------


def test_documents_returns_the_literal_documents_then_later_stages_run(db: Db) -> None:
    """Manual "$documents": the stage's documents, in order, feed the rest of the pipeline;
    it runs in any database."""
    docs = list(db.aggregate([{"$documents": [{"a": 1}, {"a": 2}, {"a": 3}]},
                              {"$match": {"a": {"$gte": 2}}},
                              {"$project": {"_id": 0, "b": {"$multiply": ["$a", 10]}}}]))
    assert docs == [{"b": 20}, {"b": 30}]


def test_documents_evaluates_its_expression_once(db: Db) -> None:
    """Manual "$documents": the value is any expression resolving to an array of objects."""
    expression = {"$concatArrays": [[{"x": 1}], [{"x": {"$add": [1, 1]}}]]}
    assert list(db.aggregate([{"$documents": expression}])) == [{"x": 1}, {"x": 2}]
    stamped = list(db.aggregate([{"$documents": [{"t": "$$NOW"}, {"t": "$$NOW"}]}]))
    assert isinstance(stamped[0]["t"], datetime.datetime)
    assert stamped[0]["t"] == stamped[1]["t"]


def test_documents_needs_an_array_of_objects(db: Db) -> None:
    """jstests documents.js: elements that are not objects are 40228; a value that is not an
    array is 5858203 (or 40228)."""
    assert _code(lambda: list(db.aggregate([{"$documents": [1, 2]}]))) == 40228
    assert _code(lambda: list(db.aggregate([{"$documents": [{"a": 1}, 2]}]))) == 40228
    assert _code(lambda: list(db.aggregate([{"$documents": "text"}]))) in (40228, 5858203)


def test_documents_placement_rules(db: Db) -> None:
    """jstests documents.js: $documents on a collection is InvalidNamespace (73), later in a
    collection's pipeline 40602; ``{aggregate: 1}`` starting with an ordinary stage is 73."""
    db.things.insert_one({"a": 1})
    assert _code(lambda: list(db.things.aggregate([{"$documents": [{"a": 1}]}]))) \
        == INVALID_NAMESPACE
    late = [{"$project": {"a": 1}}, {"$documents": [{"a": 1}]}]
    assert _code(lambda: list(db.things.aggregate(late))) == 40602
    assert _code(lambda: list(db.aggregate(late))) == INVALID_NAMESPACE
    assert _code(lambda: list(db.aggregate([{"$match": {}}]))) == INVALID_NAMESPACE


# -- $currentOp ---------------------------------------------------------------------------------


def test_current_op_shows_another_connections_running_command(
        client: MongoClient[Doc], app_client: MongoClient[Doc], db: Db) -> None:
    """Manual "$currentOp (aggregation)": one document per operation in progress, with type,
    active, opid, op, ns, command, client, appName, connectionId and secs_running. A find held
    by the failCommand fail point (blockConnection) is in progress until it returns."""
    app = app_client.options.pool_options.metadata["application"]["name"]
    db.things.insert_one({"_id": 1})
    app_client.admin.command("ping")  # the client's connection exists before the fail point
    client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                          "data": {"failCommands": ["find"], "blockConnection": True,
                                   "blockTimeMS": 1500, "appName": app}})
    found: list[Any] = []
    reader = threading.Thread(
        target=lambda: found.append(app_client[db.name].things.find_one({"_id": 1})))
    reader.start()
    try:
        def running_find() -> Doc | None:
            ops = client.admin.aggregate([{"$currentOp": {"allUsers": True}},
                                          {"$match": {"appName": app, "op": "query"}}])
            return next(iter(ops), None)

        op = wait_until(running_find, timeout=10, message="the blocked find in $currentOp")
    finally:
        reader.join(timeout=30)
        client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert found == [{"_id": 1}]
    assert op["type"] == "op" and op["active"] is True
    assert op["ns"] == f"{db.name}.things"
    assert op["command"]["find"] == "things" and op["command"]["filter"] == {"_id": 1}
    assert isinstance(op["opid"], int) and isinstance(op["connectionId"], int)
    assert isinstance(op["secs_running"], Int64)
    assert isinstance(op["client"], str) and ":" in op["client"]


def test_current_op_lists_itself_and_idle_connections_on_request(
        client: MongoClient[Doc], app_client: MongoClient[Doc]) -> None:
    """Manual "$currentOp": the aggregate running $currentOp is itself in progress;
    ``idleConnections: true`` adds idle connections (``active: false``), which are left out
    by default."""
    app = app_client.options.pool_options.metadata["application"]["name"]
    app_client.admin.command("ping")
    own = list(client.admin.aggregate([{"$currentOp": {}},
                                       {"$match": {"command.aggregate": 1}}]))
    assert any(o["command"]["pipeline"][0] == {"$currentOp": {}} for o in own)
    assert all(o["active"] for o in client.admin.aggregate([{"$currentOp": {}}]))
    idle = list(client.admin.aggregate([{"$currentOp": {"idleConnections": True}},
                                        {"$match": {"appName": app}}]))
    assert idle and all(o["active"] is False and o["type"] == "op" for o in idle)
    # (a driver's monitor may hold an awaitable hello open on a real mongod: not counted)
    busy = list(client.admin.aggregate([
        {"$currentOp": {}},
        {"$match": {"appName": app, "command.hello": {"$exists": False},
                    "command.isMaster": {"$exists": False}}}]))
    assert busy == []


def test_current_op_runs_only_on_admin_with_aggregate_1(client: MongoClient[Doc],
                                                         db: Db) -> None:
    """Manual "$currentOp": it must be the first stage of ``{aggregate: 1}`` on admin
    (InvalidNamespace, 73; 40602 when not first)."""
    db.things.insert_one({"a": 1})
    assert _code(lambda: list(db.aggregate([{"$currentOp": {}}]))) == INVALID_NAMESPACE
    assert _code(lambda: list(db.things.aggregate([{"$currentOp": {}}]))) == INVALID_NAMESPACE
    late = [{"$documents": [{"a": 1}]}, {"$currentOp": {}}]
    assert _code(lambda: list(client.admin.aggregate(late))) == 40602


def test_current_op_options_are_checked(client: MongoClient[Doc]) -> None:
    """mongod's $currentOp parser: an unknown option or a non-boolean flag is FailedToParse
    (9)."""
    for spec in ({"bogus": True}, {"allUsers": 1}):
        code = _code(lambda s=spec: list(client.admin.aggregate([{"$currentOp": s}])))
        assert code == FAILED_TO_PARSE


def test_current_op_command_form(client: MongoClient[Doc]) -> None:
    """Manual "currentOp" (command): ``{inprog: [...]}``; other fields filter the operations."""
    reply = client.admin.command({"currentOp": 1, "command.currentOp": {"$exists": True}})
    assert reply["ok"] == 1
    assert reply["inprog"] and all("currentOp" in o["command"] for o in reply["inprog"])
    none = client.admin.command({"currentOp": 1, "ns": "no.such.namespace"})
    assert none["inprog"] == []


# -- $listLocalSessions -------------------------------------------------------------------------


def test_list_local_sessions_shows_a_used_session(client: MongoClient[Doc], db: Db) -> None:
    """Manual "$listLocalSessions": a session the server has seen is listed as
    ``{_id: {id, uid}, lastUse}``; ``allUsers: true`` lists every session."""
    with client.start_session() as session:
        db.things.find_one({}, session=session)
        wanted = session.session_id["id"]
        for spec in ({}, {"allUsers": True}):
            listed = list(client.admin.aggregate([{"$listLocalSessions": spec},
                                                  {"$match": {"_id.id": wanted}}]))
            assert len(listed) == 1, spec
            (entry,) = listed
            assert isinstance(entry["lastUse"], datetime.datetime)
            uid = entry["_id"]["uid"]
            assert isinstance(uid, bytes | Binary) and len(uid) == 32
        # ``users`` lists the sessions of the named users only (no such user here).
        others = [{"$listLocalSessions": {"users": [{"user": "nobody", "db": "admin"}]}},
                  {"$match": {"_id.id": wanted}}]
        assert list(client.admin.aggregate(others)) == []


def test_list_local_sessions_runs_in_any_database_and_checks_its_fields(db: Db) -> None:
    """Manual "$listLocalSessions": run with ``{aggregate: 1}`` in any database; an unknown
    field is 40415; on a collection it is InvalidNamespace (73)."""
    assert isinstance(list(db.aggregate([{"$listLocalSessions": {}}])), list)
    assert _code(lambda: list(db.aggregate([{"$listLocalSessions": {"x": 1}}]))) \
        == UNKNOWN_FIELD
    db.things.insert_one({"a": 1})
    assert _code(lambda: list(db.things.aggregate([{"$listLocalSessions": {}}]))) \
        == INVALID_NAMESPACE
