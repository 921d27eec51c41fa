"""Catalog commands answer wrong argument types with mongod 7.0's typed errors.

Issue 10 item 7: ``createIndexes indexes:[5]`` and the like were answered "internal error".
mongod answers TypeMismatch (14), BadValue (2), FailedToParse (9), CannotCreateIndex (67),
InvalidIndexSpecificationOption (197) or its IDL range error (51024).
"""

from __future__ import annotations

from typing import Any

import pytest
from bson.code import Code
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure

Db = Database[dict[str, Any]]


def _code(db: Db, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(OperationFailure) as info:
        db.command(*args, **kwargs)
    assert "internal error" not in str(info.value).lower()
    return int(info.value.code or 0)


@pytest.mark.parametrize(("indexes", "code"), [
    ([5], 14),  # TypeMismatch: an entry must be a document
    (5, 14),
    ([], 2),  # BadValue: at least one index
    ([{"key": 5, "name": "k"}], 14),
    ([{"key": {"a": "x"}, "name": "k"}], 67),  # CannotCreateIndex: unknown index plugin
    # JavaScript code decodes as a str subclass; it is still not an index plugin (found by
    # bench/fuzz_wire.py, was "unhashable type: 'Code'").
    ([{"key": {"a": Code("x")}, "name": "k"}], 67),
    ([{"key": {"a": 1}, "name": Code("k")}], 14),  # JavaScript is not a string either
    ([{"key": {}, "name": "k"}], 67),
    ([{"key": {"a": 1}, "name": 5}], 14),
    ([{"name": "k"}], 9),  # FailedToParse: 'key' is required
    ([{"key": {"a": 1}}], 9),
    ([{"key": {"a": 1}, "name": "k", "bogus": 1}], 197),  # InvalidIndexSpecificationOption
    ([{"key": {"a": 1}, "name": "k", "unique": "yes"}], 14),
    ([{"key": {"a": 1}, "name": "k", "partialFilterExpression": 5}], 14),
], ids=lambda v: repr(v)[:40])
def test_create_indexes_argument_types(db: Db, indexes: Any, code: int) -> None:
    assert _code(db, "createIndexes", "c", indexes=indexes) == code


def test_drop_indexes_argument_types_type_mismatch_14(db: Db) -> None:
    db.c.create_index("a")
    assert _code(db, "dropIndexes", "c", index=5) == 14
    assert _code(db, "dropIndexes", "c", index=["a_1", 5]) == 14
    assert "a_1" in db.c.index_information()


def test_list_commands_argument_types_type_mismatch_14(
        client: MongoClient[dict[str, Any]], db: Db) -> None:
    db.create_collection("c")
    assert _code(db, "listCollections", filter=5) == 14
    assert _code(db, "listCollections", nameOnly="x") == 14
    assert _code(db, "listCollections", cursor=5) == 14
    assert _code(db, "listIndexes", "c", cursor=5) == 14
    assert _code(db, "listIndexes", "c", cursor={"batchSize": "x"}) == 14
    assert _code(client.admin, "listDatabases", filter=5) == 14
    assert _code(client.admin, "listDatabases", nameOnly="x") == 14


def test_create_argument_types(db: Db) -> None:
    assert _code(db, "create", "c", capped="x") == 14
    assert _code(db, "create", "c", capped=True, size=-1) == 51024  # IDL validator: >= 0
    assert _code(db, "create", "c", validator=5) == 14
    assert _code(db, "create", "c", validationLevel="sometimes") == 2
    assert _code(db, "create", "c", changeStreamPreAndPostImages=5) == 14
    assert _code(db, "create", 5) == 73
    assert db.list_collection_names() == []


def test_coll_mod_argument_types(db: Db) -> None:
    db.create_collection("c")
    assert _code(db, "collMod", "c", validator=5) == 14
    assert _code(db, "collMod", "c", index=5) == 14
    assert _code(db, "collMod", "c", index={"name": 5, "expireAfterSeconds": 1}) == 14
    assert _code(db, "collMod", "c", changeStreamPreAndPostImages={"enabled": "x"}) == 14


def test_drop_and_rename_argument_types(client: MongoClient[dict[str, Any]], db: Db) -> None:
    db.c.insert_one({"_id": 1})
    assert _code(db, "drop", 5) == 73
    assert _code(client.admin, "renameCollection", f"{db.name}.c", to=5) == 14
    assert _code(client.admin, "renameCollection", 5, to=f"{db.name}.d") == 14
    assert _code(client.admin, "renameCollection", f"{db.name}.c", to=f"{db.name}.d",
                 dropTarget="x") == 14
    assert db.c.find_one() == {"_id": 1}
