"""``$jsonSchema`` rules (manual: "$jsonSchema", "Schema Validation"), fast in-process checks
of the compiled schema; the query operator and validators through a driver are in
``test_schema_validation.py``."""

from __future__ import annotations

import datetime

import pytest
from bson import Decimal128, Int64, ObjectId

from runtime.embedded.errors import CommandError
from runtime.embedded.json_schema import compile_schema


def test_bson_type_aliases_follow_the_decoded_value() -> None:
    schema = compile_schema({"properties": {
        "i": {"bsonType": "int"}, "l": {"bsonType": "long"}, "d": {"bsonType": "date"},
        "o": {"bsonType": "objectId"}, "n": {"bsonType": ["double", "decimal"]},
        "b": {"bsonType": "bool"}}})
    good = {"i": 1, "l": Int64(1), "d": datetime.datetime(2026, 1, 1), "o": ObjectId(),
            "n": Decimal128("1.5"), "b": True}
    assert schema.matches(good)
    for field, bad in [("i", Int64(1)), ("l", 1), ("d", "2026-01-01"), ("b", 1),
                       ("n", 1)]:
        assert not schema.matches({**good, field: bad}), field


def test_json_type_number_takes_every_numeric_bson_type_but_not_bool() -> None:
    schema = compile_schema({"properties": {"x": {"type": "number", "minimum": 0}}})
    for value in (0, Int64(5), 1.5, Decimal128("2")):
        assert schema.matches({"x": value})
    assert not schema.matches({"x": True})
    assert not schema.matches({"x": Decimal128("-1")})


def test_required_properties_and_additional_properties() -> None:
    schema = compile_schema({"bsonType": "object", "required": ["a"],
                             "properties": {"a": {"enum": [1, 2]}, "_id": {}},
                             "additionalProperties": False})
    assert schema.matches({"_id": 1, "a": 1})
    assert not schema.matches({"_id": 1})
    assert not schema.matches({"_id": 1, "a": 3})
    assert not schema.matches({"_id": 1, "a": 1, "b": 0})


@pytest.mark.parametrize("keyword", ["$ref", "$schema", "default", "definitions", "format",
                                     "id"])
def test_keywords_mongodb_omits_are_failed_to_parse(keyword: str) -> None:
    """mongod: "$jsonSchema keyword '<k>' is not currently supported" (FailedToParse, 9)."""
    with pytest.raises(CommandError) as info:
        compile_schema({"properties": {"a": {keyword: "x"}}})
    assert info.value.code == 9 and keyword in info.value.message


def test_unknown_keyword_and_integer_type_are_refused() -> None:
    with pytest.raises(CommandError) as info:
        compile_schema({"minimun": 1})
    assert info.value.code == 9 and "Unknown $jsonSchema keyword: minimun" in info.value.message
    with pytest.raises(CommandError) as info:
        compile_schema({"type": "integer"})
    assert info.value.code == 9


def test_failures_name_the_broken_rule_and_path() -> None:
    schema = compile_schema({"properties": {"age": {"bsonType": "int", "minimum": 0}}})
    [failure] = schema.failures({"age": -3})
    assert failure["operatorName"] == "minimum" and failure["path"] == "age"
