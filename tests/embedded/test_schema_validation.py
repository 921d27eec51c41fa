"""Schema validation (manual: "Schema Validation", "$jsonSchema") through PyMongo.

A collection's ``validator`` is checked on every insert and update (``validationLevel``
strict/moderate/off, ``validationAction`` error/warn, ``bypassDocumentValidation``); a failing
write is DocumentValidationFailure (121) with ``errInfo``. ``$jsonSchema`` also works as a
query operator.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure, WriteError

SCHEMA = {"bsonType": "object", "required": ["status"],
          "properties": {"status": {"enum": ["pending", "paid"]},
                         "total": {"bsonType": ["int", "long", "double", "decimal"],
                                   "minimum": 0}}}


def test_insert_and_update_breaking_the_validator_fail_with_121(
        db: Database[dict[str, Any]]) -> None:
    orders = db.create_collection("orders", validator={"$jsonSchema": SCHEMA})
    orders.insert_one({"_id": 1, "status": "pending", "total": 5})
    with pytest.raises(WriteError) as info:
        orders.insert_one({"_id": 2, "status": "lost"})
    assert info.value.code == 121
    details = info.value.details or {}
    assert details["errInfo"]["failingDocumentId"] == 2
    assert details["errInfo"]["details"]["operatorName"] == "$jsonSchema"
    with pytest.raises(WriteError) as info:
        orders.update_one({"_id": 1}, {"$set": {"total": -1}})
    assert info.value.code == 121
    with pytest.raises(OperationFailure) as fam:
        orders.find_one_and_update({"_id": 1}, {"$unset": {"status": 1}})
    assert fam.value.code == 121
    assert list(orders.find()) == [{"_id": 1, "status": "pending", "total": 5}]


def test_bypass_document_validation_skips_the_validator(db: Database[dict[str, Any]]) -> None:
    orders = db.create_collection("orders", validator={"$jsonSchema": SCHEMA})
    orders.insert_one({"_id": 1, "status": "lost"}, bypass_document_validation=True)
    assert orders.count_documents({}) == 1


def test_moderate_level_lets_invalid_documents_change_and_warn_action_writes(
        db: Database[dict[str, Any]]) -> None:
    """moderate: updates to documents that already broke the rules are not checked; warn:
    the write happens (a warning is logged)."""
    orders = db.orders
    orders.insert_one({"_id": 1, "status": "lost"})
    db.command("collMod", "orders", validator={"$jsonSchema": SCHEMA},
               validationLevel="moderate")
    orders.update_one({"_id": 1}, {"$set": {"note": "still invalid"}})
    orders.insert_one({"_id": 2, "status": "paid"})
    with pytest.raises(WriteError):
        orders.update_one({"_id": 2}, {"$set": {"status": "lost"}})
    db.command("collMod", "orders", validationAction="warn")
    orders.insert_one({"_id": 3, "status": "lost"})
    assert orders.count_documents({}) == 3


def test_query_filter_validators_and_transactions(db: Database[dict[str, Any]],
                                                  client: Any) -> None:
    """A validator may be any filter; inside a transaction the statement fails at once."""
    items = db.create_collection("items", validator={"qty": {"$gte": 0}})
    with pytest.raises(WriteError):
        items.insert_one({"qty": -1})
    with client.start_session() as session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as info:
            items.insert_one({"qty": -5}, session=session)
        assert info.value.code == 121  # and, as in mongod, the failed write ends the txn
        session.abort_transaction()
    assert items.count_documents({}) == 0


def test_json_schema_query_operator(db: Database[dict[str, Any]]) -> None:
    db.orders.insert_many([{"_id": 1, "status": "paid", "total": 3},
                           {"_id": 2, "status": "lost"}, {"_id": 3, "total": 1}])
    assert [d["_id"] for d in db.orders.find({"$jsonSchema": SCHEMA})] == [1]
    assert [d["_id"] for d in db.orders.find({"$nor": [{"$jsonSchema": SCHEMA}]})] == [2, 3]


def test_unsupported_json_schema_keywords_are_refused(db: Database[dict[str, Any]]) -> None:
    """mongod: "$jsonSchema keyword 'format' is not currently supported" (FailedToParse 9),
    in queries and in validators."""
    with pytest.raises(OperationFailure) as info:
        list(db.orders.find({"$jsonSchema": {"properties": {"a": {"format": "email"}}}}))
    assert info.value.code == 9
    with pytest.raises(OperationFailure) as info:
        db.create_collection("bad", validator={"$jsonSchema": {"additionalProperties": "no"}})
    assert info.value.code == 9


def test_bad_validation_level_is_bad_value(db: Database[dict[str, Any]]) -> None:
    with pytest.raises(OperationFailure) as info:
        db.create_collection("bad", validator={"a": 1}, validationLevel="sometimes")
    assert info.value.code == 2


def test_encrypted_fields_refuse_plaintext(db: Database[dict[str, Any]]) -> None:
    """Queryable Encryption (manual: "Create an Encrypted Collection"): a collection created
    with ``encryptedFields`` refuses a plaintext value in an encrypted field with
    DocumentValidationFailure (121); an encrypted payload (BinData subtype 6) is stored."""
    from bson.binary import Binary

    coll = db.create_collection("patients", encryptedFields={"fields": [
        {"path": "ssn", "bsonType": "string", "keyId": Binary(b"k" * 16, 4)}]})
    with pytest.raises(WriteError) as info:
        coll.insert_one({"ssn": "123-45-6789"})
    assert info.value.code == 121
    coll.insert_one({"ssn": Binary(b"\x06ciphertext", 6), "name": "x"})
    coll.insert_one({"name": "no ssn"})
    assert coll.count_documents({}) == 2
