"""Collations through PyMongo, as MongoDB 7.0 applies them (manual page "Collation").

Strength 1 ignores case and accents, 2 ignores case only, 3 (the default) distinguishes both;
``caseLevel`` adds case to strength 1/2; ``caseFirst: "upper"`` orders upper case first;
``numericOrdering`` compares digit runs as numbers. A collation applies to find, sort, count,
distinct, update/delete/findAndModify filters and aggregate's ``$match``/``$sort``; an index with
a collation orders and de-duplicates by it (manual: "Collation and Index Use"), and a query uses
it for string bounds only under the same collation. A collection's default collation (``create``
with ``collation``) applies to its commands and new indexes unless they name their own.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.collation import Collation
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure
from support import ServerFactory

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]

EN1 = Collation("en", strength=1)
EN2 = Collation("en", strength=2)
EN3 = Collation("en", strength=3)


@pytest.fixture
def words(db: Db) -> Coll:
    """cafe / Café / CAFE / café in a collection without a default collation."""
    coll = db.words
    coll.insert_many([{"_id": 1, "w": "cafe"}, {"_id": 2, "w": "Café"},
                      {"_id": 3, "w": "CAFE"}, {"_id": 4, "w": "café"}])
    return coll


def _ids(cursor: Any) -> list[Any]:
    return [d["_id"] for d in cursor]


def test_equality_by_strength_collation_document_strength(words: Coll) -> None:
    """Manual "Collation", ``strength``: 1 = base letters, 2 = + diacritics, 3 = + case."""
    assert sorted(_ids(words.find({"w": "cafe"}, collation=EN1))) == [1, 2, 3, 4]
    assert sorted(_ids(words.find({"w": "cafe"}, collation=EN2))) == [1, 3]
    assert sorted(_ids(words.find({"w": "cafe"}, collation=EN3))) == [1]
    assert sorted(_ids(words.find({"w": "cafe"}))) == [1]  # simple binary comparison


def test_sort_order_by_collation_root_order_lowercase_first(words: Coll) -> None:
    """ICU root order: base letters, then accents, then case (lower before upper)."""
    assert _ids(words.find({}, collation=EN3).sort("w", 1)) == [1, 3, 4, 2]
    assert _ids(words.find({}).sort("w", 1)) == [3, 2, 1, 4]  # code points: upper case first
    assert _ids(words.find({}, collation=EN3).sort("w", -1)) == [2, 4, 3, 1]


def test_range_queries_compare_by_collation(db: Db) -> None:
    """``$gt``/``$lt`` on strings compare by the collation: "B" > "a" under en, not in binary."""
    db.r.insert_many([{"_id": 1, "s": "a"}, {"_id": 2, "s": "B"}, {"_id": 3, "s": "c"}])
    assert sorted(_ids(db.r.find({"s": {"$gt": "a"}}, collation=EN3))) == [2, 3]
    assert sorted(_ids(db.r.find({"s": {"$gt": "a"}}))) == [3]
    assert sorted(_ids(db.r.find({"s": {"$in": ["A", "C"]}}, collation=EN2))) == [1, 3]


def test_case_level_with_strength_1_collation_document_caselevel(words: Coll) -> None:
    """``caseLevel: true`` at strength 1: case counts, accents still do not."""
    found = words.find({"w": "cafe"}, collation=Collation("en", strength=1, caseLevel=True))
    assert sorted(_ids(found)) == [1, 4]


def test_case_first_upper_collation_document_casefirst(db: Db) -> None:
    """``caseFirst: "upper"`` sorts upper case before lower case at the tertiary level."""
    db.c.insert_many([{"_id": 1, "s": "a"}, {"_id": 2, "s": "A"}, {"_id": 3, "s": "b"},
                      {"_id": 4, "s": "B"}])
    upper = Collation("en", caseFirst="upper")
    assert [d["s"] for d in db.c.find({}, collation=upper).sort("s", 1)] == ["A", "a", "B", "b"]
    assert [d["s"] for d in db.c.find({}, collation=EN3).sort("s", 1)] == ["a", "A", "b", "B"]


def test_numeric_ordering_collation_document_numericordering(db: Db) -> None:
    """``numericOrdering: true`` compares digit runs as numbers: "10" > "9"."""
    db.n.insert_many([{"_id": i, "s": s} for i, s in enumerate(["10", "9", "2", "100"])])
    numeric = Collation("en", numericOrdering=True)
    assert [d["s"] for d in db.n.find({}, collation=numeric).sort("s", 1)] == \
        ["2", "9", "10", "100"]
    assert [d["s"] for d in db.n.find({}).sort("s", 1)] == ["10", "100", "2", "9"]
    assert [d["s"] for d in db.n.find({"s": {"$gt": "9"}}, collation=numeric)] == ["10", "100"]


def test_regex_ignores_collation_manual_regex_collation(words: Coll) -> None:
    """Manual ``$regex``: regular expressions are not collation-aware."""
    assert sorted(_ids(words.find({"w": {"$regex": "^caf"}}, collation=EN1))) == [1, 4]
    both = {"w": {"$regex": "^c", "$ne": "CAFE"}}
    # "cafe" equals "CAFE" at strength 2 ($ne drops it); "café" has an accent more
    assert sorted(_ids(words.find(both, collation=EN2))) == [4]


def test_regex_inside_in_and_or_keeps_binary_matching(words: Coll) -> None:
    """``$in`` mixing strings and a regex: the strings compare by the collation, the regex by
    the raw string (manual ``$in``: regular expressions in ``$in``); the same inside ``$or``."""
    found = words.find({"w": {"$in": ["CAFE", re.compile("^café$")]}}, collation=EN2)
    assert sorted(_ids(found)) == [1, 3, 4]
    either = {"$or": [{"w": {"$regex": "^C"}}, {"w": "café"}]}
    assert sorted(_ids(words.find(either, collation=EN2))) == [2, 3, 4]
    assert sorted(_ids(words.find({"w": {"$not": {"$regex": "^c"}}}, collation=EN1))) == [2, 3]


def test_locale_tailoring_and_shifted_alternate_collation_locales(db: Db) -> None:
    """Swedish sorts å, ä, ö as letters after z (manual "Collation Locales"); with
    ``alternate: "shifted"`` spaces and punctuation are ignored below strength 4."""
    db.sv.insert_many([{"s": s} for s in ["ö", "z", "a", "å", "ä", "o"]])
    swedish = [d["s"] for d in db.sv.find({}, collation=Collation("sv")).sort("s", 1)]
    assert swedish == ["a", "o", "z", "å", "ä", "ö"]
    db.p.insert_many([{"_id": 1, "s": "ab"}, {"_id": 2, "s": "a-b"}, {"_id": 3, "s": "a b"}])
    shifted = Collation("en", alternate="shifted")
    assert sorted(_ids(db.p.find({"s": "ab"}, collation=shifted))) == [1, 2, 3]
    assert sorted(_ids(db.p.find({"s": "ab"}, collation=EN3))) == [1]


def test_count_distinct_and_writes_use_the_collation(words: Coll) -> None:
    """count, distinct, update, delete and findAndModify take a ``collation`` (manual pages of
    each command); distinct reports one value per collation-equal group."""
    assert words.count_documents({"w": "CAFE"}, collation=EN2) == 2
    assert len(words.distinct("w", collation=EN1)) == 1
    assert len(words.distinct("w", collation=EN2)) == 2
    result = words.update_many({"w": "cafe"}, {"$set": {"hit": True}}, collation=EN2)
    assert result.modified_count == 2
    found = words.find_one_and_update({"w": "CAFÉ"}, {"$set": {"fam": 1}}, collation=EN2,
                                      sort=[("_id", 1)])
    assert found is not None and found["_id"] == 2
    assert words.delete_many({"w": "CAFE"}, collation=EN1).deleted_count == 4


def test_aggregate_match_and_sort_use_the_collation(db: Db) -> None:
    """aggregate's ``collation`` applies to its ``$match`` and ``$sort``."""
    db.n.insert_many([{"_id": i, "s": s} for i, s in enumerate(["10", "9", "2", "100"])])
    pipeline: list[dict[str, Any]] = [
        {"$match": {"s": {"$gt": "2"}}}, {"$sort": {"s": -1}}, {"$project": {"_id": 0, "s": 1}}]
    numeric = Collation("en", numericOrdering=True)
    assert [d["s"] for d in db.n.aggregate(pipeline, collation=numeric)] == ["100", "10", "9"]
    assert [d["s"] for d in db.n.aggregate(pipeline)] == ["9"]


def test_unique_index_with_strength_2_refuses_case_variants_e11000(db: Db) -> None:
    """A unique index with a collation compares keys by it: "A" duplicates "a" (11000)."""
    db.u.create_index("name", unique=True, collation=EN2)
    db.u.insert_one({"name": "a"})
    with pytest.raises(DuplicateKeyError) as error:
        db.u.insert_one({"name": "A"})
    assert error.value.code == 11000
    db.u.insert_one({"name": "á"})  # accents still differ at strength 2
    with pytest.raises(OperationFailure) as build:
        db.v.insert_many([{"name": "x"}, {"name": "X"}])
        db.v.create_index("name", unique=True, collation=EN2)
    assert build.value.code == 11000


def test_list_indexes_shows_full_collation_spec_version_57_1(db: Db) -> None:
    """listIndexes reports the collation with every field filled in (ICU version 57.1)."""
    db.l.create_index("name", collation=Collation("fr_CA", strength=2))
    spec = db.l.index_information()["name_1"]["collation"]
    assert spec == {"locale": "fr_CA", "caseLevel": False, "caseFirst": "off", "strength": 2,
                    "numericOrdering": False, "alternate": "non-ignorable",
                    "maxVariable": "punct", "normalization": False, "backwards": True,
                    "version": "57.1"}


def test_same_key_different_collations_are_two_indexes_manual_collation_index(db: Db) -> None:
    """Indexes with the same key pattern and different collations may coexist (distinct names)."""
    db.k.create_indexes([IndexModel([("s", ASCENDING)], name="s_en", collation=EN2),
                         IndexModel([("s", ASCENDING)], name="s_simple")])
    assert {"s_en", "s_simple"} <= set(db.k.index_information())


def _stages(plan: dict[str, Any]) -> list[str]:
    stages = []
    while plan:
        stages.append(str(plan.get("stage")))
        plan = plan.get("inputStage", {})
    return stages


def _index_name(plan: dict[str, Any]) -> str | None:
    while plan:
        if plan.get("stage") == "IXSCAN":
            return str(plan["indexName"])
        plan = plan.get("inputStage", {})
    return None


def test_explain_uses_collation_index_only_for_the_same_collation(db: Db) -> None:
    """Manual "Collation and Index Use": string comparisons use an index only when the query
    names the index's collation; non-string bounds may use it whatever the collation."""
    db.e.create_index("s", collation=EN2)
    db.e.insert_many([{"s": "a", "n": 1}, {"s": "A", "n": 2}, {"s": 3}])
    same = db.command("explain", {"find": "e", "filter": {"s": "A"},
                                  "collation": EN2.document})
    assert _index_name(same["queryPlanner"]["winningPlan"]) == "s_1"
    assert same["executionStats"]["nReturned"] == 2
    other = db.command("explain", {"find": "e", "filter": {"s": "A"}})
    assert _index_name(other["queryPlanner"]["winningPlan"]) is None
    assert other["executionStats"]["nReturned"] == 1
    numbers = db.command("explain", {"find": "e", "filter": {"s": 3}})
    assert _index_name(numbers["queryPlanner"]["winningPlan"]) == "s_1"
    assert list(db.e.find({"s": "A"}, {"_id": 0, "n": 1}, collation=EN2).sort("n", 1)) == \
        [{"n": 1}, {"n": 2}]


def test_collation_index_gives_the_sort_only_under_its_collation(db: Db) -> None:
    """Manual "Collation and Index Use": an index with a collation serves a sort on strings only
    for operations with the same collation (otherwise an in-memory SORT stage)."""
    db.o.create_index("s", collation=EN3)
    db.o.insert_many([{"s": s} for s in ["b", "B", "a", "A"]])
    same = db.command("explain", {"find": "o", "sort": {"s": 1}, "limit": 3,
                                  "collation": EN3.document})
    assert "SORT" not in _stages(same["queryPlanner"]["winningPlan"])
    assert _index_name(same["queryPlanner"]["winningPlan"]) == "s_1"
    other = db.command("explain", {"find": "o", "sort": {"s": 1}, "limit": 3})
    assert "SORT" in _stages(other["queryPlanner"]["winningPlan"])
    assert _index_name(other["queryPlanner"]["winningPlan"]) is None
    found = db.o.find({}, {"_id": 0}, collation=EN3).sort("s", -1).limit(3)
    assert [d["s"] for d in found] == ["B", "b", "A"]


def test_collection_default_collation_applies_to_commands_and_indexes(db: Db) -> None:
    """``create`` with ``collation`` sets the default of commands and indexes that name none;
    ``{locale: "simple"}`` on a command opts out (manual: db.createCollection collation)."""
    coll = db.create_collection("d", collation=EN2)
    coll.insert_many([{"_id": 1, "s": "x"}, {"_id": 2, "s": "X"}])
    assert sorted(_ids(coll.find({"s": "x"}))) == [1, 2]
    assert sorted(_ids(coll.find({"s": "x"}, collation=Collation("simple")))) == [1]
    options = coll.options()
    assert options["collation"]["strength"] == 2 and options["collation"]["version"] == "57.1"
    coll.create_index("s")
    info = coll.index_information()
    assert info["s_1"]["collation"]["strength"] == 2
    assert info["_id_"]["collation"]["locale"] == "en"
    coll.create_index("s", name="s_simple", collation=Collation("simple"))
    assert "collation" not in coll.index_information()["s_simple"]


def test_default_collation_makes_id_unique_by_it_e11000(db: Db) -> None:
    """The ``_id`` index inherits the collection's collation (listCollections ``idIndex``), so
    "K" duplicates "k" under strength 2 (11000)."""
    coll = db.create_collection("ids", collation=EN2)
    coll.insert_one({"_id": "k"})
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"_id": "K"})
    info = next(db.list_collections(filter={"name": "ids"}))
    assert info["idIndex"]["collation"]["strength"] == 2
    assert coll.find_one({"_id": "K"}) == {"_id": "k"}


@pytest.mark.parametrize(("spec", "code"), [
    ({"strength": 2}, 4),  # NoSuchKey: missing "locale"
    ({"locale": 1}, 14),  # TypeMismatch
    ({"locale": "xx"}, 2),  # BadValue: unsupported locale
    ({"locale": "en", "strength": 6}, 9),  # FailedToParse: strength 1 through 5
    ({"locale": "en", "strength": "2"}, 14),
    ({"locale": "en", "caseFirst": "middle"}, 9),
    ({"locale": "en", "caseLevel": 1}, 14),
    ({"locale": "en", "color": "red"}, 9),  # unknown field
    ({"locale": "simple", "strength": 2}, 9),
    ({"locale": "en", "strength": 1, "backwards": True}, 2),
    ({"locale": "en", "strength": 2, "caseFirst": "upper"}, 2),
    ({"locale": "en", "version": "1.0"}, 161),  # IncompatibleCollationVersion
])
def test_invalid_collation_documents_are_refused_with_mongod_codes(
        db: Db, spec: dict[str, Any], code: int) -> None:
    """mongod's collator factory: NoSuchKey 4, TypeMismatch 14, BadValue 2, FailedToParse 9,
    IncompatibleCollationVersion 161 (same answer from find, createIndexes and create)."""
    db.x.insert_one({"s": "a"})
    with pytest.raises(OperationFailure) as find:
        db.command("find", "x", filter={}, collation=spec)
    assert find.value.code == code
    with pytest.raises(OperationFailure) as index:
        db.command("createIndexes", "x", indexes=[{"key": {"s": 1}, "name": "s_1",
                                                   "collation": spec}])
    assert index.value.code == code
    with pytest.raises(OperationFailure) as create:
        db.command("create", "y", collation=spec)
    assert create.value.code == code


def test_unknown_locale_message_suggests_the_icu_locale(db: Db) -> None:
    """An unsupported locale is BadValue with mongod's message (and ICU's suggestion)."""
    with pytest.raises(OperationFailure) as error:
        db.command("find", "x", filter={}, collation={"locale": "en-US"})
    assert error.value.code == 2
    assert "Field 'locale' is invalid in: { locale: \"en-US\" }. Did you mean 'en_US'?" in \
        str(error.value)


def test_collations_survive_a_restart(fresh_server: ServerFactory) -> None:
    """A default collation and a collated unique index are durable: after a restart the index
    is rebuilt with collation keys and still refuses a case variant (11000)."""
    server = fresh_server()
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    try:
        db = client.durable
        db.create_collection("d", collation=EN2)
        db.d.create_index("s", unique=True)
        db.d.insert_many([{"_id": 1, "s": "b"}, {"_id": 2, "s": "a"}])
    finally:
        client.close()
    server.restart()
    client = MongoClient(server.uri)
    try:
        db = client.durable
        assert db.d.index_information()["s_1"]["collation"]["strength"] == 2
        with pytest.raises(DuplicateKeyError):
            db.d.insert_one({"s": "A"})
        assert [d["s"] for d in db.d.find({"s": {"$gte": "A"}}).sort("s", 1)] == ["a", "b"]
    finally:
        client.close()
