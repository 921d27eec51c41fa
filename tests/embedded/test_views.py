"""Read-only views through PyMongo (MongoDB 7.0 manual, "Views" and "Create and Query a View").

Each test names the manual page or mongod's error code it checks; the expectations follow
mongod 7.0 (and its jstests/core/views and jstests/change_streams/ban_from_views.js), so the
tests not marked ``embedded_only`` hold against a real MongoDB 7.0 replica set too.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure
from support import ServerFactory, wait_until

Doc = dict[str, Any]
Db = Database[Doc]
Coll = Collection[Doc]

# mongod's error codes (src/mongo/base/error_codes.yml).
NAMESPACE_EXISTS = 48
INVALID_OPTIONS = 72
GRAPH_CONTAINS_CYCLE = 93
VIEW_DEPTH_LIMIT_EXCEEDED = 165
COMMAND_NOT_SUPPORTED_ON_VIEW = 166
OPTION_NOT_SUPPORTED_ON_VIEW = 167
OPERATION_NOT_SUPPORTED_IN_TRANSACTION = 263


@pytest.fixture
def base(db: Db) -> Coll:
    db.base.insert_many([
        {"_id": 1, "kind": "fruit", "name": "apple", "qty": 5, "tags": ["red", "sweet"]},
        {"_id": 2, "kind": "fruit", "name": "pear", "qty": 2, "tags": ["green"]},
        {"_id": 3, "kind": "veg", "name": "leek", "qty": 7, "tags": ["green"]},
        {"_id": 4, "kind": "fruit", "name": "plum", "qty": 9, "secret": "x"},
    ])
    return db.base


FRUIT = [{"$match": {"kind": "fruit"}}, {"$project": {"secret": 0}}]


def _code(call: Any) -> int | None:
    with pytest.raises(OperationFailure) as caught:
        call()
    return caught.value.code


def test_create_view_is_listed_as_view_with_its_definition(db: Db, base: Coll) -> None:
    """Manual "Create and Query a View": views appear in listCollections as
    ``{type: "view", options: {viewOn, pipeline}, info: {readOnly: true}}``."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    infos = list(db.list_collections(filter={"type": "view"}))
    assert infos == [{"name": "fruit", "type": "view",
                      "options": {"viewOn": "base", "pipeline": FRUIT},
                      "info": {"readOnly": True}}]
    names = {i["name"]: i["type"] for i in db.list_collections(nameOnly=True)}
    assert names["fruit"] == "view" and names["base"] == "collection"
    assert "fruit" in db.list_collection_names()


def test_find_applies_filter_sort_skip_limit_projection_after_the_view(db: Db,
                                                                        base: Coll) -> None:
    """Manual "Views": a query on a view is appended to the view's pipeline."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    assert list(db.fruit.find()) == [
        {"_id": 1, "kind": "fruit", "name": "apple", "qty": 5, "tags": ["red", "sweet"]},
        {"_id": 2, "kind": "fruit", "name": "pear", "qty": 2, "tags": ["green"]},
        {"_id": 4, "kind": "fruit", "name": "plum", "qty": 9},
    ]
    found = db.fruit.find({"qty": {"$gt": 1}}, {"_id": 0, "name": 1},
                          sort=[("qty", -1)], skip=1, limit=1)
    assert list(found) == [{"name": "apple"}]
    assert db.fruit.find_one({"name": "leek"}) is None
    # A small batch size makes the read go through getMore on the view's namespace.
    assert [d["_id"] for d in db.fruit.find(batch_size=1)] == [1, 2, 4]


def test_aggregate_count_and_distinct_read_through_the_view(db: Db, base: Coll) -> None:
    """Manual "Views" (supported operations): aggregate, countDocuments,
    estimatedDocumentCount (the ``count`` command) and distinct work on views."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    total = list(db.fruit.aggregate([{"$group": {"_id": None, "qty": {"$sum": "$qty"}}}]))
    assert total == [{"_id": None, "qty": 16}]
    assert db.fruit.count_documents({}) == 3
    assert db.fruit.count_documents({"qty": {"$lt": 6}}) == 2
    assert db.fruit.estimated_document_count() == 3
    assert db.command("count", "fruit", query={"qty": {"$gt": 1}}, skip=1)["n"] == 2
    assert sorted(db.fruit.distinct("tags")) == ["green", "red", "sweet"]
    assert db.fruit.distinct("name", {"qty": {"$gt": 4}}) == ["apple", "plum"]


def test_view_on_a_view_runs_both_pipelines(db: Db, base: Coll) -> None:
    """Manual "Views": a view may be defined on another view; the inner pipeline runs first."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    db.command("create", "big_fruit", viewOn="fruit",
               pipeline=[{"$match": {"qty": {"$gte": 5}}}, {"$project": {"_id": 0, "name": 1}}])
    assert list(db.big_fruit.find(sort=[("name", -1)])) == [{"name": "plum"},
                                                            {"name": "apple"}]
    assert db.big_fruit.count_documents({}) == 2


def test_views_follow_changes_of_what_they_read(db: Db, base: Coll) -> None:
    """jstests/core/views/views_change.js: a view shows the base collection's current
    documents, and is empty once the base is dropped."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    base.update_one({"_id": 3}, {"$set": {"kind": "fruit"}})
    base.insert_one({"_id": 5, "kind": "fruit", "name": "fig", "qty": 1})
    assert [d["_id"] for d in db.fruit.find()] == [1, 2, 3, 4, 5]
    base.drop()
    assert list(db.fruit.find()) == []


def test_view_on_a_missing_collection_is_empty(db: Db) -> None:
    """jstests/core/views/views_creation.js: viewOn may name a collection that does not
    exist; the view is then empty."""
    db.create_collection("ghost", viewOn="nothing_here", pipeline=[])
    assert list(db.ghost.find()) == []
    assert db.ghost.count_documents({}) == 0
    assert db.ghost.estimated_document_count() == 0


def test_writes_and_index_commands_on_a_view_fail_with_166(db: Db, base: Coll) -> None:
    """Manual "Views": views are read-only; mongod answers CommandNotSupportedOnView (166)
    "Namespace <db>.<view> is a view, not a collection"."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    view = db.fruit
    for call in (
        lambda: view.insert_one({"_id": 9}),
        lambda: view.update_one({"_id": 1}, {"$set": {"qty": 0}}),
        lambda: view.replace_one({"_id": 1}, {"qty": 0}),
        lambda: view.delete_many({}),
        lambda: view.find_one_and_update({"_id": 1}, {"$set": {"qty": 0}}),
        lambda: view.find_one_and_delete({"_id": 1}),
        lambda: view.create_index("qty"),
        lambda: list(view.list_indexes()),
        lambda: view.drop_index("qty_1"),
        lambda: db.command("collStats", "fruit"),
    ):
        assert _code(call) == COMMAND_NOT_SUPPORTED_ON_VIEW
    with pytest.raises(OperationFailure) as caught:
        view.insert_one({"_id": 9})
    assert f"{db.name}.fruit is a view, not a collection" in str(caught.value)
    assert base.count_documents({}) == 4  # nothing was written anywhere


def test_create_on_an_existing_name_is_namespace_exists(db: Db, base: Coll) -> None:
    """``create`` of a name already used by a collection or a view: NamespaceExists (48)."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    assert _code(lambda: db.command("create", "fruit", viewOn="base")) == NAMESPACE_EXISTS
    assert _code(lambda: db.command("create", "fruit")) == NAMESPACE_EXISTS
    assert _code(lambda: db.command("create", "base", viewOn="fruit")) == NAMESPACE_EXISTS


def test_writing_or_change_stream_stages_are_refused_in_a_view_pipeline(db: Db) -> None:
    """jstests/core/views/views_creation.js and change_streams/ban_from_views.js: $out, $merge
    and $changeStream in a view definition are OptionNotSupportedOnView (167); $out nested in
    $facet is 40600, in a $lookup sub-pipeline 51047."""
    for stage in ({"$out": "elsewhere"}, {"$merge": {"into": "elsewhere"}},
                  {"$changeStream": {}}):
        code = _code(lambda s=stage: db.command("create", "bad", viewOn="base", pipeline=[s]))
        assert code == OPTION_NOT_SUPPORTED_ON_VIEW
    facet = [{"$facet": {"out": [{"$out": "elsewhere"}]}}]
    assert _code(lambda: db.command("create", "bad", viewOn="base", pipeline=facet)) == 40600
    lookup = [{"$lookup": {"from": "other", "pipeline": [{"$out": "x"}], "as": "r"}}]
    assert _code(lambda: db.command("create", "bad", viewOn="base", pipeline=lookup)) == 51047
    assert "bad" not in db.list_collection_names()


def test_view_cycles_are_refused_with_93(db: Db) -> None:
    """jstests/core/views/views_validation.js: a view graph with a cycle (through viewOn or a
    $lookup) is GraphContainsCycle (93), on create and on collMod."""
    assert _code(lambda: db.command("create", "a", viewOn="a")) == GRAPH_CONTAINS_CYCLE
    db.command("create", "a", viewOn="b")
    assert _code(lambda: db.command("create", "b", viewOn="a")) == GRAPH_CONTAINS_CYCLE
    lookup = [{"$lookup": {"from": "a", "localField": "x", "foreignField": "y", "as": "z"}}]
    code = _code(lambda: db.command("create", "b", viewOn="c", pipeline=lookup))
    assert code == GRAPH_CONTAINS_CYCLE
    db.command("create", "b", viewOn="c")
    code = _code(lambda: db.command("collMod", "b", viewOn="a", pipeline=[]))
    assert code == GRAPH_CONTAINS_CYCLE


def test_a_chain_deeper_than_20_views_is_refused_with_165(db: Db) -> None:
    """jstests/core/views/views_validation.js: at most 20 views deep
    (ViewDepthLimitExceeded, 165)."""
    for i in range(1, 21):
        db.command("create", f"v{i}", viewOn=f"v{i + 1}")
    assert _code(lambda: db.command("create", "v0", viewOn="v1")) == VIEW_DEPTH_LIMIT_EXCEEDED
    assert list(db.v1.find()) == []


def test_drop_removes_the_view_only(db: Db, base: Coll) -> None:
    """Manual "Views" (Remove a View): ``drop`` on a view removes its definition; the
    collection it reads is untouched."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    db.fruit.drop()
    assert "fruit" not in db.list_collection_names()
    assert base.count_documents({}) == 4
    db.create_collection("fruit")  # the name is free again, for a collection too
    assert db.fruit.count_documents({}) == 0


def test_coll_mod_changes_a_view_definition(db: Db, base: Coll) -> None:
    """Manual "Views" (Modify a View) / collMod: viewOn and pipeline replace the definition."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    db.command("collMod", "fruit", viewOn="base", pipeline=[{"$match": {"kind": "veg"}}])
    assert [d["name"] for d in db.fruit.find()] == ["leek"]
    (info,) = db.list_collections(filter={"name": "fruit"})
    assert info["options"] == {"viewOn": "base", "pipeline": [{"$match": {"kind": "veg"}}]}
    # jstests/core/views/views_change.js (no auth): one of the two keeps the other.
    db.command("collMod", "fruit", pipeline=[{"$match": {"qty": 2}}])
    assert [d["name"] for d in db.fruit.find()] == ["pear"]
    assert _code(lambda: db.command("collMod", "base", viewOn="fruit")) == INVALID_OPTIONS


def test_change_stream_on_a_view_is_refused_with_166(db: Db, base: Coll) -> None:
    """jstests/change_streams/ban_from_views.js: ``$changeStream`` on a view is
    CommandNotSupportedOnView (166)."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    assert _code(lambda: db.fruit.watch()) == COMMAND_NOT_SUPPORTED_ON_VIEW


def test_rename_of_a_view_is_refused_with_166(db: Db, base: Coll) -> None:
    """Manual "Views": views cannot be renamed; mongod answers 166 "cannot rename view"."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    assert _code(lambda: db.fruit.rename("fruit2")) == COMMAND_NOT_SUPPORTED_ON_VIEW
    assert "fruit" in db.list_collection_names()


def test_lookup_and_union_with_read_views(db: Db, base: Coll) -> None:
    """Manual $lookup / $unionWith: the foreign namespace may be a view."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    db.orders.insert_many([{"_id": "o1", "item": "pear"}, {"_id": "o2", "item": "leek"}])
    joined = list(db.orders.aggregate([
        {"$lookup": {"from": "fruit", "localField": "item", "foreignField": "name",
                     "as": "fruit"}},
        {"$project": {"n": {"$size": "$fruit"}}},
    ]))
    assert joined == [{"_id": "o1", "n": 1}, {"_id": "o2", "n": 0}]
    union = list(db.orders.aggregate([{"$unionWith": "fruit"}, {"$count": "n"}]))
    assert union == [{"n": 5}]


def test_out_from_a_view_writes_a_collection(db: Db, base: Coll) -> None:
    """Manual "$out": the pipeline may read a view; the output is a plain collection."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    db.fruit.aggregate([{"$match": {"qty": {"$gt": 4}}}, {"$out": "snapshot"}])
    assert [d["_id"] for d in db.snapshot.find()] == [1, 4]
    assert db.snapshot.options() == {}


def test_create_view_in_a_transaction_is_refused(client: MongoClient[Doc], db: Db,
                                                 base: Coll) -> None:
    """Manual "Transactions and Operations": views cannot be created in a transaction
    (OperationNotSupportedInTransaction, 263)."""
    with client.start_session() as session:
        session.start_transaction()
        code = _code(lambda: db.command("create", "fruit", viewOn="base", session=session))
        session.abort_transaction()  # the failed statement aborted it already
    assert code == OPERATION_NOT_SUPPORTED_IN_TRANSACTION
    assert "fruit" not in db.list_collection_names()


def test_db_stats_counts_views(db: Db, base: Coll) -> None:
    """dbStats reports the number of views."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
    db.create_collection("veg", viewOn="base", pipeline=[{"$match": {"kind": "veg"}}])
    assert db.command("dbStats")["views"] == 2


@pytest.mark.embedded_only
def test_views_survive_a_restart(fresh_server: ServerFactory) -> None:
    """Views are documents of ``<db>.system.views``: they are as durable as any write and
    work after a kill -9 and restart on the same dbpath."""
    server = fresh_server()
    client: MongoClient[Doc] = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    try:
        db = client.shop
        db.base.insert_many([{"_id": i, "qty": i} for i in range(5)])
        db.create_collection("big", viewOn="base", pipeline=[{"$match": {"qty": {"$gte": 3}}}])
        db.command("create", "bigger", viewOn="big", pipeline=[{"$match": {"qty": 4}}])
        db.command("create", "gone", viewOn="base")
        db.gone.drop()
        views_doc = db["system.views"].find_one({"_id": "shop.big"})
        assert views_doc == {"_id": "shop.big", "viewOn": "base",
                             "pipeline": [{"$match": {"qty": {"$gte": 3}}}]}
    finally:
        client.close()
    assert server.kill() == -9
    server.restart()
    client = MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    try:
        db = client.shop
        assert [d["_id"] for d in db.big.find()] == [3, 4]
        assert list(db.bigger.find()) == [{"_id": 4, "qty": 4}]
        kinds = {i["name"]: i["type"] for i in db.list_collections()}
        assert kinds == {"base": "collection", "system.views": "collection", "big": "view",
                         "bigger": "view"}
        assert db.command("count", "big")["n"] == 2
        assert _code(lambda: db.big.insert_one({})) == COMMAND_NOT_SUPPORTED_ON_VIEW
    finally:
        client.close()


def test_simple_collation_is_accepted_for_a_view(db: Db, base: Coll) -> None:
    """Manual "Create and Query a View": ``collation`` is a create option of views; the simple
    collation is the default (binary comparison)."""
    db.create_collection("fruit", viewOn="base", pipeline=FRUIT, collation={"locale": "simple"})
    assert db.fruit.count_documents({"name": "apple"}) == 1


@pytest.mark.embedded_only
def test_non_simple_view_collation_is_refused_not_ignored(db: Db, base: Coll) -> None:
    """The embedded server's own limit: mongod 7.0 reads a view with its collation (manual
    "Views", Collation Behavior); the pipeline engine here compares binary, so such a view is
    refused (BadValue, 2) rather than created and read wrongly."""
    code = _code(lambda: db.create_collection("fruit", viewOn="base", pipeline=FRUIT,
                                              collation={"locale": "en", "strength": 2}))
    assert code == 2
    assert "fruit" not in db.list_collection_names()


def _next_events(stream: Any, count: int) -> list[Doc]:
    events: list[Doc] = []

    def collected() -> bool:
        change = stream.try_next()
        if change is not None:
            events.append(change)
        return len(events) >= count

    wait_until(collected, timeout=10, message=f"{count} change events")
    return events


def test_view_ddl_shows_in_expanded_database_streams_only(db: Db, base: Coll) -> None:
    """jstests/change_streams/ddl_view_events.js: with showExpandedEvents a database stream
    reports create, modify and drop of a view (operationDescription {viewOn, pipeline}); a
    stream without it, or on a collection, does not."""
    pipeline = [{"$match": {"qty": 2}}]
    with db.watch(show_expanded_events=True) as expanded, db.watch() as plain, \
            base.watch(show_expanded_events=True) as on_base:
        db.create_collection("fruit", viewOn="base", pipeline=FRUIT)
        db.command("collMod", "fruit", viewOn="base", pipeline=pipeline)
        db.fruit.drop()
        base.insert_one({"_id": 10})
        events = _next_events(expanded, 4)
        summary = [(e["operationType"], e["ns"], e.get("operationDescription"))
                   for e in events]
        ns = {"db": db.name, "coll": "fruit"}
        assert summary == [("create", ns, {"viewOn": "base", "pipeline": FRUIT}),
                           ("modify", ns, {"viewOn": "base", "pipeline": pipeline}),
                           ("drop", ns, None),
                           ("insert", {"db": db.name, "coll": "base"}, None)]
        assert [e["operationType"] for e in _next_events(plain, 1)] == ["insert"]
        assert [e["operationType"] for e in _next_events(on_base, 1)] == ["insert"]
