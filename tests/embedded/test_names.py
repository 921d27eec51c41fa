"""Database, collection, namespace and index names are checked as mongod 7.0 checks them.

Issue 10 item 1: ``renameCollection`` to ``"fz."`` used to succeed, creating a collection named
``""``; after the next checkpoint the server could not start on that data folder. mongod refuses
such names with InvalidNamespace (73).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure
from raw_wire import RawConnection
from support import ServerFactory

Db = Database[dict[str, Any]]
INVALID_NAMESPACE = 73


def _code(db: Db, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(OperationFailure) as info:
        db.command(*args, **kwargs)
    return int(info.value.code or 0)


@pytest.fixture
def raw(mongodb_uri: str) -> Iterator[RawConnection]:
    """A raw connection: PyMongo refuses to send some of the names under test."""
    with RawConnection(mongodb_uri) as connection:
        yield connection


def test_rename_to_namespace_with_empty_collection_is_invalid_namespace_73(
        client: MongoClient[dict[str, Any]], db: Db) -> None:
    db.src.insert_one({"_id": 1})
    for target in ("fz.", f"{db.name}.", f"{db.name}.a$b", f"{db.name}.a\x00b", "nodot",
                   f"{db.name}.system.foo", ".x"):
        with pytest.raises(OperationFailure) as info:
            client.admin.command("renameCollection", f"{db.name}.src", to=target)
        assert info.value.code == INVALID_NAMESPACE, target
    assert db.src.find_one() == {"_id": 1}
    assert "" not in db.list_collection_names()


@pytest.mark.parametrize("name", ["", "a$b", "a\x00b", ".starts-with-dot", "system.foo"])
def test_create_with_invalid_collection_name_is_invalid_namespace_73(db: Db, name: str) -> None:
    assert _code(db, "create", name) == INVALID_NAMESPACE
    assert name not in db.list_collection_names()


@pytest.mark.parametrize("command", ["insert", "update", "createIndexes"])
def test_implicit_creation_checks_the_name_invalid_namespace_73(db: Db, command: str) -> None:
    for name in ("a$b", "system.foo", "x" * 300):
        if command == "insert":
            code = _code(db, "insert", name, documents=[{"_id": 1}])
        elif command == "update":
            code = _code(db, "update", name,
                         updates=[{"q": {"_id": 1}, "u": {"$set": {"a": 1}}, "upsert": True}])
        else:
            code = _code(db, "createIndexes", name, indexes=[{"key": {"a": 1}, "name": "a_1"}])
        assert code == INVALID_NAMESPACE, (command, name[:20])
    assert db.list_collection_names() == []


def test_namespace_over_255_bytes_is_invalid_namespace_73(db: Db) -> None:
    room = 255 - len(db.name) - 1
    db.create_collection("c" * room)  # exactly 255 bytes: allowed
    assert _code(db, "create", "c" * (room + 1)) == INVALID_NAMESPACE
    assert _code(db, "create", "é" * (room // 2 + 1)) == INVALID_NAMESPACE  # bytes, not chars


def test_client_creatable_system_collections_are_allowed(db: Db) -> None:
    db.create_collection("system.js")
    db.create_collection("system.profile")
    assert {"system.js", "system.profile"} <= set(db.list_collection_names())


@pytest.mark.parametrize("db_name", ["a/b", "a\\b", "a.b", "a b", 'a"b', "a$b", "a\x00b",
                                     "d" * 64])
def test_invalid_database_name_is_invalid_namespace_73(raw: RawConnection, db_name: str) -> None:
    reply = raw.command({"create": "c", "$db": db_name})
    assert reply["ok"] == 0 and reply["code"] == INVALID_NAMESPACE, reply
    reply = raw.command({"insert": "c", "documents": [{"_id": 1}], "$db": db_name})
    assert reply["ok"] == 0 and reply["code"] == INVALID_NAMESPACE, reply


def test_database_name_of_63_bytes_is_allowed(client: MongoClient[dict[str, Any]]) -> None:
    name = "d" * 63
    try:
        client[name].create_collection("c")
        assert "c" in client[name].list_collection_names()
    finally:
        client.drop_database(name)


def test_index_names_empty_is_67_and_star_is_bad_value_2(db: Db) -> None:
    assert _code(db, "createIndexes", "c", indexes=[{"key": {"a": 1}, "name": ""}]) == 67
    assert _code(db, "createIndexes", "c", indexes=[{"key": {"a": 1}, "name": "*"}]) == 2


def test_coll_mod_and_drop_of_missing_namespace_are_namespace_not_found_26(db: Db) -> None:
    assert _code(db, "collMod", "missing", validator={}) == 26
    assert _code(db, "drop", "missing") == 26


def test_renamed_to_bad_name_data_folder_still_starts_after_checkpoint(
        fresh_server: ServerFactory) -> None:
    # The original reproducer, end to end: refused with 73, and the data folder (checkpointed
    # by the clean stop) serves everything after a restart.
    server = fresh_server()
    with MongoClient(server.uri) as client:
        client.fz.src.insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as info:
            client.admin.command("renameCollection", "fz.src", to="fz.")
        assert info.value.code == INVALID_NAMESPACE
    assert server.stop() == 0
    server.restart()
    with MongoClient(server.uri) as client:
        assert client.fz.src.find_one() == {"_id": 1}
        assert client.fz.list_collection_names() == ["src"]
