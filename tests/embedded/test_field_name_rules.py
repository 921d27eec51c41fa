"""Field-name rules of writes (issue 12), as MongoDB 7.0 applies them, through PyMongo.

Sources: the manual's "Field Names with Periods and Dollar Signs" (dot-dollar-considerations,
MongoDB 5.0+: ``$``-prefixed and dotted names are stored by inserts, refused at the top level
of a replacement or of a field an update operator creates), the ``_id`` field restrictions
(not an array, regex or undefined; no ``$``-prefixed subfields) and the server's
``storage_validation`` / ``fixDocumentForInsert`` codes: DollarPrefixedFieldName 52,
InvalidIdField 53, EmptyFieldName 56, ImmutableField 66.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import Regex
from pymongo.database import Database
from pymongo.errors import OperationFailure, WriteError

Db = Database[dict[str, Any]]

REPLACEMENT_DOLLAR = ("The dollar ($) prefixed field '{0}' in '{1}' is not allowed in the "
                      "context of an update's replacement document. Consider using an "
                      "aggregation pipeline with $replaceWith.")
ID_IMMUTABLE = "Performing an update on the path '_id' would modify the immutable field '_id'"


def _write_error(db: Db, command: dict[str, Any]) -> dict[str, Any] | None:
    """The first write error of a write command run as given (no client-side checks)."""
    reply = db.command(command)
    errors = reply.get("writeErrors")
    return errors[0] if errors else None


def _update(db: Db, q: dict[str, Any], u: Any, **options: Any) -> dict[str, Any] | None:
    return _write_error(db, {"update": "c", "updates": [{"q": q, "u": u, **options}]})


# -- inserts -----------------------------------------------------------------------------------


def test_insert_stores_dollar_prefixed_and_dotted_names_at_any_level(db: Db) -> None:
    """Manual (dollar-prefix, "Insert Operations"): ``$``-prefixed fields are permitted as top
    level and nested field names for inserts, reserved words (``$inc``, ``$id``) included;
    dotted names (period-prefix page) and empty names are stored as given."""
    docs = [{"_id": 1, "$price": 50, "quantity": 30},
            {"_id": 2, "$id": "h1961", "location": {"$db": "novels", "$inc": True}},
            {"_id": 3, "a.b": 1, "c": {"d.e": 2}},
            {"_id": 4, "": "empty name"}]
    assert _write_error(db, {"insert": "c", "documents": docs}) is None
    assert list(db.c.find({}, sort=[("_id", 1)])) == docs


@pytest.mark.parametrize("bad_id,kind", [([1, 2], "array"), (Regex("^a"), "regex")])
def test_insert_refuses_array_or_regex_id_with_invalid_id_field_53(db: Db, bad_id: Any,
                                                                   kind: str) -> None:
    """``storageValidIdField``: InvalidIdField (53) "The '_id' value cannot be of type
    array" (manual: "The _id field may contain values of any BSON data type, other than an
    array, regex, or undefined")."""
    error = _write_error(db, {"insert": "c", "documents": [{"_id": bad_id}]})
    assert error is not None
    assert (error["code"], error["errmsg"]) == (53, f"The '_id' value cannot be of type {kind}")
    assert db.c.count_documents({}) == 0


def test_insert_refuses_dollar_prefixed_subfield_of_id_with_52(db: Db) -> None:
    """Manual (``_id`` field): "If the _id contains subfields, the subfield names cannot begin
    with a ($) symbol": DollarPrefixedFieldName (52)."""
    error = _write_error(db, {"insert": "c", "documents": [{"_id": {"$a": 1}}]})
    assert error is not None and error["code"] == 52
    assert error["errmsg"] == ("_id fields may not contain '$'-prefixed fields: $a is not valid "
                               "for storage.")
    # dotted subfield names of _id are fine
    assert _write_error(db, {"insert": "c", "documents": [{"_id": {"a.b": 1}}]}) is None


# -- replacement updates -----------------------------------------------------------------------


def test_replacement_refuses_top_level_dollar_field_with_52_but_allows_nested(db: Db) -> None:
    """Manual ("Document Replacing Updates"): "$-prefixed fields are not permitted as top level
    field names" of a replacement: DollarPrefixedFieldName (52); nested ones are fine."""
    db.c.insert_one({"_id": 1, "a": 1})
    error = _update(db, {"_id": 1}, {"b": 2, "$rooms": 1})
    assert error is not None
    assert (error["code"], error["errmsg"]) == (52, REPLACEMENT_DOLLAR.format("$rooms", "$rooms"))
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "a": 1}
    db.c.replace_one({"_id": 1}, {"address": {"$street": "Elm Road"}, "x.y": 1})
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "address": {"$street": "Elm Road"}, "x.y": 1}


def test_replacement_that_changes_id_is_immutable_field_66(db: Db) -> None:
    """ImmutableField (66): "After applying the update, the (immutable) field '_id' was found to
    have been altered to _id: 2" (replaceOne and findAndModify alike)."""
    db.c.insert_one({"_id": 1, "a": 1})
    error = _update(db, {"_id": 1}, {"_id": 2, "a": 2})
    assert error is not None and error["code"] == 66
    assert error["errmsg"] == ("After applying the update, the (immutable) field '_id' was found "
                               "to have been altered to _id: 2")
    with pytest.raises(OperationFailure) as raised:
        db.c.find_one_and_replace({"_id": 1}, {"_id": 3})
    assert raised.value.code == 66
    db.c.replace_one({"_id": 1}, {"_id": 1, "a": 5})  # the same _id is no change
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "a": 5}


def test_upsert_replacement_id_must_match_the_query_id_66(db: Db) -> None:
    """An upsert seeds the new document from the query's equality fields; a replacement whose
    ``_id`` differs from the query's would change it: ImmutableField (66). With the same
    ``_id`` the upsert inserts."""
    error = _update(db, {"_id": 50}, {"_id": 51, "x": 1}, upsert=True)
    assert error is not None and error["code"] == 66
    assert error["errmsg"].endswith("was found to have been altered to _id: 51")
    with pytest.raises(OperationFailure) as raised:
        db.c.find_one_and_replace({"_id": 60}, {"_id": 61}, upsert=True)
    assert raised.value.code == 66
    assert db.c.count_documents({}) == 0
    db.c.replace_one({"_id": 52}, {"_id": 52, "x": 1}, upsert=True)
    assert db.c.find_one({"_id": 52}) == {"_id": 52, "x": 1}


def test_upsert_replacement_may_hold_top_level_dollar_fields(db: Db) -> None:
    """Manual (dollar-prefix): "An update which creates a new document during an upsert is
    treated as an insert rather than an update for field name validation"."""
    assert _update(db, {"_id": 70}, {"b": 1, "$hotel": 320}, upsert=True) is None
    assert db.c.find_one({"_id": 70}) == {"_id": 70, "b": 1, "$hotel": 320}


def test_upsert_with_array_id_is_invalid_id_field_53(db: Db) -> None:
    """The document an upsert inserts is checked by ``storage_validation::scanDocument``:
    an array ``_id`` is InvalidIdField (53)."""
    error = _update(db, {"_id": {"$eq": [1]}}, {"$set": {"x": 1}}, upsert=True)
    assert error is not None
    assert (error["code"], error["errmsg"]) == (53, "The '_id' value cannot be of type array")


# -- operator updates --------------------------------------------------------------------------


def test_set_of_top_level_dollar_field_on_existing_document_is_52(db: Db) -> None:
    """Manual (dollar-prefix, "Document Modifying Updates"): a top-level ``$`` field needs
    ``$setField`` in a pipeline; ``$set`` of one is DollarPrefixedFieldName (52), while a
    ``$``-named value inside a field is fine."""
    db.c.insert_one({"_id": 1, "a": 1})
    error = _update(db, {"_id": 1}, {"$set": {"$hotel": 1}})
    assert error is not None
    assert (error["code"], error["errmsg"]) == (52, REPLACEMENT_DOLLAR.format("$hotel", "$hotel"))
    error = _update(db, {"_id": 1}, {"$rename": {"a": "$b"}})
    assert error is not None and error["code"] == 52
    db.c.update_one({"_id": 1}, {"$set": {"a": {"$x": 1}}})
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "a": {"$x": 1}}


@pytest.mark.parametrize("path", ["a..b", "a.", ".a"])
def test_update_path_with_an_empty_component_is_empty_field_name_56(db: Db, path: str) -> None:
    """EmptyFieldName (56): "The update path 'a..b' contains an empty field name, which is not
    allowed." (mongod parses the path before looking at any document)."""
    db.c.insert_one({"_id": 1, "a": {"b": 1}})
    for query in ({"_id": 1}, {"_id": 999}):
        error = _update(db, query, {"$set": {path: 1}})
        assert error is not None
        assert (error["code"], error["errmsg"]) == (
            56, f"The update path '{path}' contains an empty field name, which is not allowed.")
    with pytest.raises(OperationFailure) as raised:
        db.c.find_one_and_update({"_id": 1}, {"$unset": {path: 1}})
    assert raised.value.code == 56


def test_empty_update_path_is_empty_field_name_56(db: Db) -> None:
    """EmptyFieldName (56): "An empty update path is not valid."."""
    db.c.insert_one({"_id": 1})
    with pytest.raises(WriteError) as raised:
        db.c.update_one({"_id": 1}, {"$set": {"": 1}})
    assert raised.value.code == 56


@pytest.mark.parametrize("update", [
    {"$set": {"_id": 2}}, {"$inc": {"_id": 1}}, {"$unset": {"_id": 1}},
    {"$rename": {"_id": "b"}}, {"$rename": {"a": "_id"}},
    [{"$set": {"_id": 9}}], [{"$unset": "_id"}],
], ids=["set", "inc", "unset", "rename-from", "rename-to", "pipeline-set", "pipeline-unset"])
def test_every_update_form_that_changes_id_is_immutable_field_66(db: Db, update: Any) -> None:
    """ImmutableField (66) "Performing an update on the path '_id' would modify the immutable
    field '_id'" for operator and pipeline updates, in update and findAndModify."""
    db.c.insert_one({"_id": 1, "a": 2})
    error = _update(db, {"_id": 1}, update)
    assert error is not None
    assert (error["code"], error["errmsg"]) == (66, ID_IMMUTABLE)
    with pytest.raises(OperationFailure) as raised:
        db.command({"findAndModify": "c", "query": {"_id": 1}, "update": update})
    assert raised.value.code == 66
    assert db.c.find_one({"_id": 1}) == {"_id": 1, "a": 2}


def test_set_of_id_to_its_own_value_is_no_change(db: Db) -> None:
    """Setting ``_id`` to the value it has does not modify it: no error, nothing modified."""
    db.c.insert_one({"_id": 1, "a": 1})
    result = db.c.update_one({"_id": 1}, {"$set": {"_id": 1}})
    assert (result.matched_count, result.modified_count) == (1, 0)


def test_upsert_set_of_id_different_from_query_id_is_66(db: Db) -> None:
    """An upsert seeded with the query's ``_id`` cannot ``$set`` another: ImmutableField 66."""
    error = _update(db, {"_id": 53}, {"$set": {"_id": 54}}, upsert=True)
    assert error is not None and error["code"] == 66
    assert db.c.count_documents({}) == 0

