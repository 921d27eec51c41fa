"""Expressions, queries and updates whose cost depends on their arguments are bounded, honour
``maxTimeMS``, and malformed ones get MongoDB's typed error (issue 10, items 4 and 7).

Reproducers: ``$pow: [3, NumberLong(30000000)]`` blocked every client for 20 s (MongoDB computes
integer powers in 64 bits and falls back to double on overflow: the answer is an instant
``Infinity``); ``{$expr: {$eq: [1]}}``, ``$let: 5`` and a filter nested 900 levels answered
"internal error"; ``{name: {$regex: 5}}`` silently matched nothing.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from bson.code import Code
from bson.int64 import Int64
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

Doc = dict[str, Any]

MAX_TIME_MS_EXPIRED = 50


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    c = db.items
    c.insert_many([{"_id": 1, "name": "ann", "n": 5, "arr": [1, 2, 3]},
                   {"_id": 2, "name": "bob", "n": Int64(2**62), "arr": []}])
    return c


def _project(coll: Collection[Doc], expression: Any) -> Any:
    [doc] = coll.aggregate([{"$match": {"_id": 1}}, {"$project": {"_id": 0, "x": expression}}])
    return doc.get("x")


def _error(call: Any) -> OperationFailure:
    with pytest.raises(OperationFailure) as caught:
        call()
    return caught.value


# -- item 4: bounded cost --------------------------------------------------------------------


def test_pow_with_huge_exponent_is_an_instant_double(coll: Collection[Doc]) -> None:
    """MongoDB: an int/long power that overflows 64 bits is computed as a double (inf here);
    it used to block the server for 20 s (and larger exponents for ever)."""
    started = time.monotonic()
    assert _project(coll, {"$pow": [3, Int64(30_000_000)]}) == math.inf
    assert _project(coll, {"$pow": [-3, Int64(10**15 + 1)]}) == -math.inf
    assert _project(coll, {"$pow": [2, 10**12]}) == math.inf
    assert time.monotonic() - started < 2
    assert _project(coll, {"$pow": [2, 62]}) == 2**62  # exact while it fits (a long)
    assert _project(coll, {"$pow": [2, 64]}) == float(2**64)  # then a double
    assert _project(coll, {"$pow": [1, Int64(10**18)]}) == 1


def test_int64_overflow_in_arithmetic_becomes_double(coll: Collection[Doc]) -> None:
    """MongoDB's $add/$multiply/$sum on longs that overflow return a double."""
    big = Int64(2**63 - 1)
    assert _project(coll, {"$add": [big, 1]}) == float(2**63)
    assert _project(coll, {"$multiply": [big, 4]}) == float(2**63 - 1) * 4
    assert _project(coll, {"$sum": [big, big]}) == float(2**64 - 2)


def test_inc_overflow_and_non_numeric_argument(coll: Collection[Doc]) -> None:
    """$inc with a non-numeric argument: TypeMismatch 14 "Cannot increment with non-numeric
    argument"; on a non-numeric field: TypeMismatch "Cannot apply $inc to a value of
    non-numeric type"; the document is unchanged."""
    error = _error(lambda: coll.update_one({"_id": 1}, {"$inc": {"n": "x"}}))
    assert error.code == 14 and "Cannot increment with non-numeric argument" in str(error)
    error = _error(lambda: coll.update_one({"_id": 1}, {"$inc": {"name": 1}}))
    assert error.code == 14 and "Cannot apply $inc to a value of non-numeric type" in str(error)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "name": "ann", "n": 5, "arr": [1, 2, 3]}


def test_range_over_the_memory_limit(coll: Collection[Doc]) -> None:
    """ExceededMemoryLimit 146 "$range would use too much memory", before building it."""
    started = time.monotonic()
    error = _error(lambda: _project(coll, {"$range": [0, 10**12]}))
    assert error.code == 146 and "$range would use too much memory" in str(error)
    assert time.monotonic() - started < 2


def test_round_and_trunc_places_are_bounded(coll: Collection[Doc]) -> None:
    """MongoDB's $round/$trunc take a place in [-20, 100] (51083)."""
    for operator in ("$round", "$trunc"):
        error = _error(lambda op=operator: _project(coll, {op: [1.5, 10**9]}))
        assert error.code == 51083, operator


def test_nested_quantifier_regex_is_accepted(coll: Collection[Doc]) -> None:
    """MongoDB accepts any valid pattern (PCRE2 bounds the match instead): a repetition nested
    in a repetition is no longer refused (it was BadValue 2 / 51091). The match budget itself
    is tested in test_regex_budget.py."""
    coll.insert_one({"_id": 3, "name": "hello big world"})
    found = coll.find({"name": {"$regex": r"^(\w+\s?)*$"}})
    assert [d["_id"] for d in found] == [1, 2, 3]
    assert _project(coll, {"$regexMatch": {"input": "$name", "regex": r"^(\w+\s?)*$"}})


def test_max_time_ms_ends_an_expensive_aggregate(coll: Collection[Doc],
                                                 mongodb_uri: str) -> None:
    """MaxTimeMSExpired (50, "operation exceeded time limit"); the server then answers other
    clients and the same one."""
    coll.insert_many([{"_id": 100 + i, "v": i, "r": list(range(100))} for i in range(1000)])
    heavy = {"$reduce": {"input": "$r", "initialValue": 0,
                         "in": {"$add": ["$$value", "$$this", "$v"]}}}
    error = _error(lambda: list(coll.aggregate([{"$project": {"x": heavy}}], maxTimeMS=1)))
    assert error.code == MAX_TIME_MS_EXPIRED
    assert "operation exceeded time limit" in str(error)
    # As heavy per document as the aggregate: a light filter over these 1,000 documents can
    # finish within the millisecond.
    scan = {"$expr": {"$gt": [heavy, -1]}}
    error = _error(lambda: list(coll.find(scan).max_time_ms(1)))
    assert error.code == MAX_TIME_MS_EXPIRED
    with MongoClient(mongodb_uri) as other:
        assert other.admin.command("ping")["ok"] == 1
    assert coll.count_documents({"_id": 1}) == 1
    # A generous limit lets the same work finish.
    assert len(list(coll.aggregate([{"$project": {"x": heavy}}], maxTimeMS=600_000))) == 1002


# -- item 7: typed errors --------------------------------------------------------------------

TYPED_ERRORS: dict[str, tuple[Any, int]] = {
    # "Expression $eq takes exactly 2 arguments. 1 were passed in."
    "eq_one_argument": ({"$eq": [1]}, 16020),
    "gt_one_argument": ({"$gt": [1]}, 16020),
    "cond_one_argument": ({"$cond": [True]}, 16020),
    "cond_scalar": ({"$cond": 5}, 16020),
    "array_elem_at_one_argument": ({"$arrayElemAt": [[1]]}, 16020),
    "size_two_arguments": ({"$size": [[1], [2]]}, 16020),
    "let_not_object": ({"$let": 5}, 16874),
    "map_not_object": ({"$map": 5}, 16878),
    "filter_not_object": ({"$filter": 5}, 28646),
    "reduce_not_object": ({"$reduce": 5}, 40075),
    "switch_not_object": ({"$switch": 5}, 40060),
    "date_to_string_not_object": ({"$dateToString": 5}, 18629),
    "unknown_operator": ({"$foo": 1}, 168),  # InvalidPipelineOperator
}


@pytest.mark.parametrize("case", sorted(TYPED_ERRORS))
def test_malformed_expression_gets_mongodb_code(coll: Collection[Doc], case: str) -> None:
    expression, code = TYPED_ERRORS[case]
    assert _error(lambda: _project(coll, expression)).code == code
    assert _error(lambda: list(coll.find({"$expr": expression}))).code == code


def test_regex_operand_must_be_a_string(coll: Collection[Doc]) -> None:
    """BadValue 2 "$regex has to be a string" (it used to match nothing silently)."""
    error = _error(lambda: list(coll.find({"name": {"$regex": 5}})))
    assert error.code == 2 and "$regex has to be a string" in str(error)
    # JavaScript code is a str subclass in PyMongo but not a BSON string (found by
    # bench/fuzz_wire.py: was "internal error: unhashable type: 'Code'").
    error = _error(lambda: list(coll.find({"name": {"$regex": Code("a")}})))
    assert error.code == 2 and "$regex has to be a string" in str(error)


def test_filter_nested_900_levels(coll: Collection[Doc]) -> None:
    """MongoDB refuses BSON nested beyond 200 levels: Overflow 15 "BSONObj exceeds maximum
    nested object depth" (here an "internal error" from a Python RecursionError)."""
    deep: Any = {"a": 1}
    for _ in range(900):
        deep = {"a": deep}
    error = _error(lambda: list(coll.find(deep)))
    assert error.code == 15 and "maximum nested object depth" in str(error)
    expression: Any = 1
    for _ in range(450):  # two levels each
        expression = {"$add": [expression]}
    assert _error(lambda: _project(coll, expression)).code == 15
    assert coll.count_documents({}) == 2


def test_update_operator_shapes(coll: Collection[Doc]) -> None:
    """$unset: 5 is FailedToParse 9; $push to a non-array is BadValue 2."""
    assert _error(lambda: coll.update_one({"_id": 1}, {"$unset": 5})).code == 9
    assert _error(lambda: coll.update_one({"_id": 1}, {"$push": {"name": 1}})).code == 2
