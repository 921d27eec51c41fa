"""Random expressions, filters and update documents, most of them malformed, through the real
server (issue 10, item 7's fuzzer).

Each is built from a grammar of operators with random (often wrong) argument shapes and sent
with PyMongo as ``find({$expr: ...})``, ``aggregate([{$project: {x: ...}}])``, a filter and an
``update_one``. MongoDB answers a result or a typed error; so must the embedded server: an
``OperationFailure`` whose code is never InternalError (1), a reply within a few seconds, and
the server still serving afterwards. ``FUZZ_EXAMPLES`` raises the example count for long local
runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from bson.int64 import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DocumentTooLarge, InvalidDocument, OperationFailure

Doc = dict[str, Any]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
INTERNAL_ERROR = 1
SLOW_SECONDS = 5.0

EXPRESSION_OPERATORS = [
    "$add", "$subtract", "$multiply", "$divide", "$mod", "$pow", "$exp", "$ln", "$log",
    "$log10", "$sqrt", "$abs", "$ceil", "$floor", "$round", "$trunc", "$sum", "$avg", "$min",
    "$max", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$cmp", "$and", "$or", "$not", "$cond",
    "$ifNull", "$switch", "$let", "$map", "$filter", "$reduce", "$in", "$size", "$slice",
    "$arrayElemAt", "$concatArrays", "$reverseArray", "$isArray", "$indexOfArray",
    "$objectToArray", "$arrayToObject", "$mergeObjects", "$concat", "$substr", "$substrCP",
    "$substrBytes", "$toUpper", "$toLower", "$split", "$strLenCP", "$strcasecmp", "$trim",
    "$regexMatch", "$regexFind", "$toString", "$toInt", "$toLong", "$toDouble", "$toDecimal",
    "$toBool", "$toDate", "$convert", "$type", "$dateToString", "$dateAdd", "$year", "$literal",
    "$setUnion", "$range", "$zip", "$replaceAll", "$getField", "$foo",
]
QUERY_OPERATORS = ["$eq", "$ne", "$gt", "$lt", "$in", "$nin", "$exists", "$type", "$regex",
                   "$size", "$all", "$elemMatch", "$mod", "$not", "$bitsAllSet", "$foo"]
UPDATE_OPERATORS = ["$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$push",
                    "$addToSet", "$pull", "$pullAll", "$pop", "$currentDate", "$bit",
                    "$setOnInsert", "$foo"]
FIELDS = ["a", "b", "arr", "s", "d", "sub", "sub.x", "arr.0", "", "$x", "a\x00b", "n"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(Int64),
    st.sampled_from([0, -1, 2, 64, 10**9, 3.5, float("inf"), float("nan"), 1e308, -0.0]),
    st.text(max_size=8), st.sampled_from(["$a", "$arr", "$s", "$$NOW", "$$ROOT", "$$foo",
                                          "^(a+)+$", "%Y", "x\x00y"]),
)


def _operator_call(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    argument = st.one_of(children, st.lists(children, max_size=4),
                         st.dictionaries(st.sampled_from(["input", "in", "as", "if", "then",
                                                          "else", "vars", "cond", "regex",
                                                          "to", "date", "format", "branches",
                                                          "initialValue", "find",
                                                          "replacement", "unit", "amount",
                                                          "startDate"]),
                                         children, max_size=4))
    return st.builds(lambda op, arg: {op: arg}, st.sampled_from(EXPRESSION_OPERATORS), argument)


expressions = st.recursive(scalars, _operator_call, max_leaves=12)


def _query_condition(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(values, st.dictionaries(st.sampled_from(QUERY_OPERATORS), values,
                                             max_size=2))


filters = st.dictionaries(
    st.sampled_from(FIELDS + ["$and", "$or", "$nor", "$expr"]),
    _query_condition(st.one_of(scalars, st.lists(scalars, max_size=3), expressions)),
    max_size=3)
updates = st.dictionaries(
    st.sampled_from(UPDATE_OPERATORS),
    st.one_of(scalars, st.dictionaries(st.sampled_from(FIELDS),
                                       st.one_of(scalars, st.lists(scalars, max_size=3),
                                                 st.dictionaries(st.sampled_from(
                                                     ["$each", "$slice", "$position", "$sort",
                                                      "$type", "x"]), scalars, max_size=2)),
                                       max_size=3)),
    min_size=1, max_size=2)

FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    c = db.fuzz
    c.insert_many([{"_id": 1, "a": 5, "b": "text", "arr": [1, "x", {"y": 2}], "s": "aaaa!",
                    "sub": {"x": 1}, "n": Int64(2**62)},
                   {"_id": 2, "a": None, "arr": [], "s": ""}])
    return c


def _answers(call: Any) -> None:
    """The call returns, or fails with a typed error; quickly either way."""
    started = time.monotonic()
    try:
        call()
    except OperationFailure as exc:
        assert exc.code != INTERNAL_ERROR, exc.details
        assert exc.code is not None, exc.details
    except (InvalidDocument, DocumentTooLarge, OverflowError, RecursionError):
        pass  # refused by PyMongo before sending (a NUL in a name, a huge int, ...)
    assert time.monotonic() - started < SLOW_SECONDS


@FUZZ_SETTINGS
@given(expression=expressions)
def test_random_expressions(coll: Collection[Doc], expression: Any) -> None:
    _answers(lambda: list(coll.aggregate([{"$project": {"x": expression}}])))
    _answers(lambda: list(coll.find({"$expr": expression})))
    _answers(lambda: coll.update_many({}, [{"$set": {"e": expression}}]))


@FUZZ_SETTINGS
@given(query=filters, update=updates)
def test_random_filters_and_updates(coll: Collection[Doc], query: Doc, update: Doc) -> None:
    _answers(lambda: list(coll.find(query)))
    _answers(lambda: coll.update_one(query, update, upsert=True))
    _answers(lambda: coll.update_one({"_id": 1}, update))
    assert coll.database.client.admin.command("ping")["ok"] == 1
