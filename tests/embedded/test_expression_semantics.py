"""MongoDB truthiness and variables in expressions, through PyMongo.

Truthiness (manual, "$and (aggregation)" and "$cond"): only ``false``, ``null``, missing /
undefined and numeric zero of every type are false; ``""``, ``{}``, ``[]``, NaN and everything
else are true, wherever an expression is coerced to a boolean ($expr, $cond, $and/$or/$not,
$switch, $filter, $map, $reduce, $allElementsTrue/$anyElementTrue, $redact). Variables (manual,
"Variables in
Aggregation Expressions" and the ``let`` option of find/aggregate/update/delete): ``$$NOW``,
``$$CLUSTER_TIME`` and ``let`` constants reach every ``$expr``, however deep in
``$and``/``$or``/``$nor``.

Valid against a real MongoDB 7.0 replica set as well as the embedded server.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Decimal128, Int64
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]

#: (_id, value, MongoDB truthiness); _id 14 has no ``v`` at all (missing).
VALUES: list[tuple[int, Any, bool]] = [
    (1, "", True), (2, {}, True), (3, [], True), (4, "x", True), (5, 0, False),
    (6, 0.0, False), (7, Int64(0), False), (8, Decimal128("0"), False),
    (9, Decimal128("-0"), False), (10, None, False), (11, False, False), (12, True, True),
    (13, float("nan"), True), (15, Decimal128("0.5"), True), (16, -0.0, False), (17, 7, True),
]
TRUTHY = sorted(i for i, _, truth in VALUES if truth)


@pytest.fixture
def values(db: Db) -> Coll:
    """One document per value of :data:`VALUES` (and one without ``v``)."""
    db.vals.insert_many([{"_id": i, "v": v, "tags": ["a"]} for i, v, _ in VALUES])
    db.vals.insert_one({"_id": 14, "tags": ["a"]})
    return db.vals


def ids(docs: Any) -> list[Any]:
    """The sorted ``_id`` values of some documents."""
    return sorted(d["_id"] for d in docs)


def test_expr_in_find_uses_mongodb_truthiness(values: Coll) -> None:
    """``find({$expr: "$v"})`` keeps exactly the truthy values ("" {} [] NaN are true; every
    numeric zero, null, false and missing are false) - top level and inside ``$or``/``$and``
    next to a condition only the general matcher evaluates (``$size``)."""
    assert ids(values.find({"$expr": "$v"})) == TRUTHY
    assert ids(values.find({"$or": [{"$expr": "$v"}, {"tags": {"$size": 5}}]})) == TRUTHY
    assert ids(values.find({"$and": [{"$expr": "$v"}, {"tags": {"$size": 1}}]})) == TRUTHY
    falsy = sorted({*(i for i, _, _ in VALUES), 14} - set(TRUTHY))
    assert ids(values.find({"$nor": [{"$expr": "$v"}, {"tags": {"$size": 5}}]})) == falsy


def test_match_expr_and_boolean_operators_use_mongodb_truthiness(values: Coll) -> None:
    """``$match: {$expr}``, ``$cond``, ``$and``, ``$or``, ``$not``, ``$switch`` and ``$toBool``
    agree on each value (manual: $cond, $and, $or, $not, $switch, $toBool)."""
    assert ids(values.aggregate([{"$match": {"$expr": "$v"}}])) == TRUTHY
    out = values.aggregate([{"$project": {
        "cond": {"$cond": ["$v", True, False]},
        "and": {"$and": ["$v"]},
        "or": {"$or": [False, "$v"]},
        "not": {"$not": ["$v"]},
        "switch": {"$switch": {"branches": [{"case": "$v", "then": True}], "default": False}},
        "ifelse": {"$cond": {"if": "$v", "then": "yes", "else": "no"}},
    }}])
    for doc in out:
        truth = doc["_id"] in TRUTHY
        assert (doc["cond"], doc["and"], doc["or"], doc["not"], doc["switch"]) == (
            truth, truth, truth, not truth, truth), doc
        assert doc["ifelse"] == ("yes" if truth else "no")


def test_array_operators_use_mongodb_truthiness(db: Db) -> None:
    """``$filter`` keeps the elements whose ``cond`` is truthy ("" included), ``$map`` with
    ``$cond``, ``$reduce``, ``$allElementsTrue`` and ``$anyElementTrue`` agree."""
    array = [v for _, v, _ in VALUES if not (isinstance(v, float) and v != v)]
    truthy = [v for _, v, truth in VALUES if truth and not (isinstance(v, float) and v != v)]
    db.arr.insert_one({"_id": 1, "a": array})
    [doc] = db.arr.aggregate([{"$project": {
        "kept": {"$filter": {"input": "$a", "cond": "$$this"}},
        "flags": {"$map": {"input": "$a", "as": "x", "in": {"$cond": ["$$x", 1, 0]}}},
        "count": {"$reduce": {"input": "$a", "initialValue": 0,
                              "in": {"$add": ["$$value", {"$cond": ["$$this", 1, 0]}]}}},
        "all_true": {"$allElementsTrue": [["", {}, [], "x", Decimal128("2")]]},
        "all_false": {"$allElementsTrue": [["", Decimal128("0")]]},
        "any_true": {"$anyElementTrue": [[0, None, False, ""]]},
        "any_false": {"$anyElementTrue": [[0, None, False, Int64(0), Decimal128("0")]]},
        "cond_empty_string": {"$filter": {"input": [1, 2], "cond": ""}},
    }}])
    assert doc["kept"] == truthy
    assert doc["flags"] == [1 if truth else 0 for _, v, truth in VALUES
                            if not (isinstance(v, float) and v != v)]
    assert doc["count"] == len(truthy)
    assert (doc["all_true"], doc["all_false"]) == (True, False)
    assert (doc["any_true"], doc["any_false"]) == (True, False)
    assert doc["cond_empty_string"] == [1, 2]


def test_filter_limit_and_errors(db: Db) -> None:
    """``$filter`` with ``limit`` (MongoDB 5.2+) keeps at most that many matches; a non-array
    input fails with 28651 and ``$allElementsTrue`` of a non-array with 17040."""
    db.arr.insert_one({"_id": 1, "a": [1, 2, 3, 4], "s": "text"})
    [doc] = db.arr.aggregate([{"$project": {"f": {"$filter": {
        "input": "$a", "cond": {"$gt": ["$$this", 1]}, "limit": 2}}}}])
    assert doc["f"] == [2, 3]
    with pytest.raises(OperationFailure) as caught:
        list(db.arr.aggregate([{"$project": {"f": {"$filter": {"input": "$s", "cond": True}}}}]))
    assert caught.value.code == 28651
    with pytest.raises(OperationFailure) as caught:
        list(db.arr.aggregate([{"$project": {"f": {"$allElementsTrue": ["$s"]}}}]))
    assert caught.value.code == 17040


SLICES: list[tuple[list[Any], Any]] = [
    ([[1, 2, 3], 1, 1], [2]), ([[1, 2, 3], -2], [2, 3]), ([[1, 2, 3], 15, 2], []),
    ([[1, 2, 3], -15, 2], [1, 2]), ([[1, 2, 3, 4], -9, 2], [1, 2]), ([[1, 2, 3], -15], [1, 2, 3]),
    ([[1, 2, 3], 2.0, Int64(5)], [3]), ([[1, 2], Decimal128("1")], [1]),
    (["$missing", 2], None), ([None, 1, 1], None), ([[1, 2], "$missing"], None),
    ([[1, 2], 0, None], None), (["$missing", "x"], None),
]


@pytest.mark.parametrize(("operand", "expected"), SLICES)
def test_slice_as_mongodb_evaluates_it(db: Db, operand: list[Any], expected: Any) -> None:
    """``$slice`` (the examples of MongoDB's reference among them): a negative position stops
    at the array's start; null when the array, position or count is null or missing; the same
    in an aggregation and in an update pipeline (the compiled path)."""
    db.arr.insert_one({"_id": 1})
    [doc] = db.arr.aggregate([{"$project": {"s": {"$slice": operand}}}])
    assert doc["s"] == expected
    db.arr.update_one({"_id": 1}, [{"$set": {"s": {"$slice": operand}}}])
    assert db.arr.find_one({"_id": 1}) == {"_id": 1, "s": expected}


@pytest.mark.parametrize(("operand", "code", "message"), [
    (["x", 1], 28724, "First argument to $slice must be an array, but is of type: string"),
    ([[1], "a"], 28725, "Second argument to $slice must be a numeric value, but is of type: "
                        "string"),
    ([[1], 1.5], 28726, "Second argument to $slice can't be represented as a 32-bit integer"),
    ([[1], 0, True], 28727, "Third argument to $slice must be numeric, but is of type: bool"),
    ([[1], 0, 2.5], 28728, "Third argument to $slice can't be represented as a 32-bit integer"),
    ([[1], 0, 0], 28729, "Third argument to $slice must be positive: 0"),
])
def test_slice_errors(db: Db, operand: list[Any], code: int, message: str) -> None:
    """Bad ``$slice`` arguments fail with MongoDB's codes, naming the argument and its type."""
    db.arr.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as caught:
        list(db.arr.aggregate([{"$project": {"s": {"$slice": operand}}}]))
    assert caught.value.code == code
    assert message in str(caught.value)


@pytest.fixture
def deadlines(db: Db) -> Coll:
    """Two tasks: one due yesterday, one due in a year."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    db.tasks.insert_many([
        {"_id": "past", "deadline": now - datetime.timedelta(days=1), "tags": ["x"]},
        {"_id": "future", "deadline": now + datetime.timedelta(days=365), "tags": ["x"]},
    ])
    return db.tasks


def test_now_reaches_expr_inside_logical_operators(deadlines: Coll) -> None:
    """``$$NOW`` inside ``$expr`` inside ``$or``/``$and``/``$nor`` (any depth): exactly the past
    deadline is before now. Were ``$$NOW`` dropped (missing orders before every date), the past
    one would not match, and under ``$nor`` the future one would."""
    late = {"$expr": {"$lt": ["$deadline", "$$NOW"]}}
    general = {"tags": {"$size": 5}}  # only the general matcher evaluates $size
    for query in (
        {"$or": [late]},
        {"$or": [late, general]},
        {"$and": [{"$or": [general, {"$and": [late]}]}]},
        {"$nor": [{"$expr": {"$gte": ["$deadline", "$$NOW"]}}, general]},
        {"$or": [{"$nor": [{"$nor": [late]}]}, general]},
    ):
        assert ids(deadlines.find(query)) == ["past"], query
        assert ids(deadlines.aggregate([{"$match": query}])) == ["past"], query
    assert deadlines.count_documents({"$or": [late, general]}) == 1


def test_cluster_time_reaches_expr_inside_or(deadlines: Coll) -> None:
    """``$$CLUSTER_TIME`` (a timestamp on a replica set) is visible in a nested ``$expr``."""
    query = {"$or": [{"tags": {"$size": 5}},
                     {"$and": [{"$expr": {"$eq": [{"$type": "$$CLUSTER_TIME"}, "timestamp"]}}]}]}
    assert ids(deadlines.find(query)) == ["future", "past"]


@pytest.fixture
def people(db: Db) -> Coll:
    """Three people, ann, bob and cid (_id 1 to 3)."""
    db.people.insert_many([{"_id": i, "name": n, "tags": ["t"]}
                           for i, n in enumerate(["ann", "bob", "cid"], start=1)])
    return db.people


def _nested(variable: str) -> dict[str, Any]:
    """A filter whose only way to match is ``name == $$<variable>``, three levels down."""
    return {"$or": [
        {"tags": {"$size": 9}},
        {"$and": [{"tags": {"$size": 1}},
                  {"$nor": [{"$nor": [{"$expr": {"$eq": ["$name", f"$${variable}"]}}]}]}]},
    ]}


def test_let_reaches_nested_expr_in_find_and_aggregate(people: Coll) -> None:
    """A ``let`` constant selects exactly one document through ``$or``/``$and``/``$nor``
    (find and aggregate ``let``, MongoDB 5.0+)."""
    assert ids(people.find(_nested("who"), let={"who": "bob"})) == [2]
    assert ids(people.aggregate([{"$match": _nested("who")}], let={"who": "cid"})) == [3]


def test_let_reaches_nested_expr_in_update_and_delete(people: Coll) -> None:
    """update/delete ``let`` (MongoDB 5.0+) reaches an ``$expr`` nested in logical operators:
    exactly the chosen document is updated, then deleted."""
    result = people.update_many(_nested("who"), {"$set": {"hit": True}}, let={"who": "ann"})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert ids(people.find({"hit": True})) == [1]
    deleted = people.delete_many(_nested("who"), let={"who": "cid"})
    assert deleted.deleted_count == 1
    assert ids(people.find()) == [1, 2]


def test_expr_inside_elem_match_is_refused(people: Coll) -> None:
    """``$expr`` may appear at the top level or in ``$or``/``$and``/``$nor``, never inside
    ``$elemMatch`` (jstests expr_valid_positions): BadValue (2)."""
    with pytest.raises(OperationFailure) as caught:
        list(people.find({"tags": {"$elemMatch": {"$expr": {"$eq": ["$name", "ann"]}}}}))
    assert caught.value.code == 2


def test_redact_uses_truthiness_and_command_variables(db: Db) -> None:
    """$redact: ``$$DESCEND`` walks embedded documents and arrays of documents, ``$$PRUNE``
    drops them (a ``""`` or ``{}`` condition is true, numeric zero false), and the command's
    ``$$NOW`` and ``let`` variables are visible next to ``$$KEEP``/``$$PRUNE``/``$$DESCEND``."""
    db.r.insert_one({"_id": 1, "hide": 0, "a": {"hide": "", "v": 1}, "b": {"v": 2},
                     "list": [{"hide": Decimal128("0"), "v": 3}, {"hide": {}, "v": 4}]})
    out = list(db.r.aggregate([{"$redact": {"$cond": ["$hide", "$$PRUNE", "$$DESCEND"]}}]))
    assert out == [{"_id": 1, "hide": 0, "b": {"v": 2},
                    "list": [{"hide": Decimal128("0"), "v": 3}]}]
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    db.due.insert_many([{"_id": "past", "due": now - datetime.timedelta(days=1)},
                        {"_id": "future", "due": now + datetime.timedelta(days=1)}])
    late = {"$cond": [{"$lt": ["$due", "$$NOW"]}, "$$KEEP", "$$PRUNE"]}
    assert ids(db.due.aggregate([{"$redact": late}])) == ["past"]
    chosen = {"$cond": [{"$eq": ["$_id", "$$pick"]}, "$$KEEP", "$$PRUNE"]}
    assert ids(db.due.aggregate([{"$redact": chosen}], let={"pick": "future"})) == ["future"]
