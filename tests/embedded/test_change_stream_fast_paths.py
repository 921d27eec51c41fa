"""The change-stream fast paths give what the general path gives.

A stream's leading ``$match`` stages are decided on the change-log entry before any event is
built (``runtime/embedded/change_filters.py``), and a trailing inclusion ``$project`` resolves
only the fields it keeps. Only leading ``$match`` stages are split that way, so a stream whose
pipeline starts with the no-op ``{$replaceWith: "$$ROOT"}`` takes the general path (the engine's
pipeline): each test opens such a stream next to the fast one, at the same position, and expects
the same events, tokens and ``postBatchResumeToken`` from both.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId
from change_stream_support import Change, Stream
from pymongo.database import Database

from runtime.embedded import change_filters, change_streams
from runtime.embedded.datastore import DataStore, WriteUnit

pytestmark = pytest.mark.embedded_only

Db = Database[dict[str, Any]]
Pipeline = list[dict[str, Any]]
GENERAL = {"$replaceWith": "$$ROOT"}
ME, OTHER = "instance-a", "instance-b"
FINISHED = ["completed", "failed", "skipped"]
RUNNING = ["processing", "processing_dirty"]


def wakeup_pipeline(tasks: list[str], instance: str = ME) -> list[dict[str, Any]]:
    """The shape of ``runtime/wakeup.py``'s stream."""
    colls = {"$in": tasks}
    return [
        {"$match": {"operationType": {"$in": ["insert", "update", "replace"]}, "$or": [
            {"ns.coll": colls, "fullDocument.status": "pending"},
            {"ns.coll": colls, "fullDocument.status": {"$in": FINISHED},
             "fullDocument.lastOwner": {"$ne": instance}},
            {"ns.coll": colls, "fullDocument.status": {"$in": RUNNING},
             "fullDocument.lease.owner": {"$ne": instance}},
            {"ns.coll": "meta", "documentKey._id": "leader"},
            {"ns.coll": "meta", "documentKey._id": {"$in": ["throttle:r1", "reactor:r1"]}},
        ]}},
        {"$project": {"ns.coll": 1, "documentKey": 1, "fullDocument.reactor": 1,
                      "fullDocument.status": 1, "fullDocument.nextRunAt": 1,
                      "fullDocument.lease.owner": 1, "fullDocument.until": 1,
                      "fullDocument.owner": 1, "fullDocument.expiresAt": 1,
                      "fullDocument.paused": 1}},
    ]


def read_all(stream: Stream) -> tuple[list[Change], Any]:
    """Every event the stream has now (all writes were acknowledged before), and its token."""
    events: list[Change] = []
    while (change := stream.try_next()) is not None:
        events.append(change)
    return events, stream.resume_token


def watch_both(target: Any, pipeline: list[dict[str, Any]],
               **options: Any) -> tuple[Stream, Stream]:
    """A fast and a general stream over ``target`` with the same stages and options."""
    options.setdefault("max_await_time_ms", 50)
    return (target.watch(pipeline, **options), target.watch([GENERAL, *pipeline], **options))


def same_results(fast: Stream, general: Stream) -> list[Change]:
    """Read both streams; their events (fields in order) and tokens must be identical."""
    with fast, general:
        fast_events, fast_token = read_all(fast)
        general_events, general_token = read_all(general)
    assert [list(e.items()) for e in fast_events] == [list(e.items()) for e in general_events]
    assert fast_token == general_token
    return fast_events


def task_writes(db: Db, coll: str) -> None:
    """A task's life with the runtime's writes, and a few odd ones."""
    tasks = db[coll]
    tasks.insert_one({"_id": 1, "reactor": "r1", "status": "pending", "nextRunAt": 1})
    tasks.update_one({"_id": 1}, {"$set": {"status": "processing",
                                           "lease": {"owner": ME, "claim": 1}}})
    tasks.update_one({"_id": 1}, {"$set": {"status": "completed", "lastOwner": ME},
                                  "$unset": {"lease": 1}})
    tasks.insert_one({"_id": 2, "reactor": "r1", "status": "pending"})
    tasks.update_one({"_id": 2}, {"$set": {"status": "processing",
                                           "lease": {"owner": OTHER, "claim": 2}}})
    tasks.insert_one({"_id": 3, "reactor": "r1", "status": "pending"})
    tasks.update_one({"_id": 3}, {"$set": {"status": "failed"}})  # no lastOwner: $ne matches
    tasks.insert_one({"_id": 4, "reactor": "r1", "status": "pending"})
    tasks.update_one({"_id": 4}, {"$set": {"status": "processing"}})
    tasks.delete_one({"_id": 4})  # the lookup of the update finds nothing
    tasks.replace_one({"_id": 3}, {"reactor": "r1", "status": "skipped", "lastOwner": OTHER})
    tasks.insert_one({"_id": ObjectId(), "status": ["pending", "x"]})  # array: general matcher
    tasks.insert_one({"_id": 5, "status": "processing",
                      "lease": [{"owner": OTHER}, {"owner": ME}]})  # paths through an array
    tasks.update_one({"_id": 5}, {"$set": {"n": 1}})
    tasks.insert_one({"_id": 6, "status": "processing", "lease": "not a document"})
    tasks.delete_one({"_id": 2})


def test_wakeup_stream_over_several_collections(db: Db) -> None:
    fast, general = watch_both(db, wakeup_pipeline(["tasks", "more_tasks"]),
                               full_document="updateLookup")
    task_writes(db, "tasks")
    task_writes(db, "more_tasks")
    task_writes(db, "not_watched")
    db.meta.insert_one({"_id": "leader", "owner": OTHER, "expiresAt": 5})
    db.meta.update_one({"_id": "leader"}, {"$set": {"owner": ME}})
    db.meta.insert_one({"_id": "throttle:r1", "until": 7})
    db.meta.insert_one({"_id": "planner:r1", "position": 1})  # not wanted
    db.meta.update_one({"_id": "planner:r1"}, {"$set": {"position": 2}})
    db.meta.delete_one({"_id": "leader"})
    events = same_results(fast, general)
    colls = [e["ns"]["coll"] for e in events]
    assert colls.count("tasks") == colls.count("more_tasks") > 0
    assert "not_watched" not in colls
    assert [e["documentKey"]["_id"] for e in events if e["ns"]["coll"] == "meta"] == [
        "leader", "leader", "throttle:r1"]
    # Inserts show the document inserted; updates the document when read: task 1's updates
    # show it completed by this instance (filtered out), those of 4 and 2 find it deleted.
    keys = [e["documentKey"]["_id"] for e in events if e["ns"]["coll"] == "tasks"]
    assert keys.count(1) == keys.count(2) == keys.count(4) == 1
    assert keys.count(3) == 3  # insert, update and replace: now skipped by another instance
    assert 6 in keys
    first = next(e for e in events if e["ns"]["coll"] == "tasks")
    assert list(first) == ["_id", "fullDocument", "ns", "documentKey"]
    assert first["ns"] == {"coll": "tasks"}


def test_collection_stream_with_projection_of_the_full_document(db: Db) -> None:
    pipeline: Pipeline = [
        {"$match": {"operationType": {"$in": ["insert", "update", "replace", "delete"]}}},
        {"$project": {"documentKey": 1, "operationType": 1, "fullDocument": 1}}]
    fast, general = watch_both(db.items, pipeline)
    task_writes(db, "items")
    task_writes(db, "others")
    db.items.drop()  # not matched: no event, but the stream is invalidated
    events = same_results(fast, general)
    assert len(events) == 16
    assert {e["operationType"] for e in events} == {"insert", "update", "replace", "delete"}


def test_update_lookup_after_later_changes_and_deletes(db: Db) -> None:
    pipeline: Pipeline = [{"$match": {"fullDocument.n": {"$gte": 2}}},
                {"$project": {"fullDocument.n": 1, "fullDocument.sub.a": 1, "ns": 1}}]
    fast, general = watch_both(db.items, pipeline, full_document="updateLookup")
    db.items.insert_many([{"_id": i, "n": 0, "sub": {"a": i, "b": 1}} for i in range(4)])
    db.items.update_many({}, {"$inc": {"n": 1}})
    db.items.update_many({"_id": {"$lt": 3}}, {"$inc": {"n": 1}})
    db.items.delete_one({"_id": 0})
    db.items.update_one({"_id": 1}, {"$set": {"sub": [{"a": 1}]}})  # projected through an array
    events = same_results(fast, general)
    # Each update event shows the document as it is when read (n == 2 for 1 and 2).
    assert [e["fullDocument"]["n"] for e in events] == [2] * 5
    assert events[0]["fullDocument"] == {"n": 2, "sub": [{"a": 1}]}


@pytest.mark.parametrize("full_document", ["default", "updateLookup", "whenAvailable"])
def test_conditions_on_a_missing_or_null_full_document(db: Db, full_document: str) -> None:
    pipeline: Pipeline = [{"$match": {"$or": [
        {"fullDocument.x": {"$ne": 1}, "fullDocument.y.z": {"$exists": False}},
        {"fullDocument": None}, {"fullDocument": {"$exists": False}}]}},
        {"$project": {"operationType": 1, "fullDocument": 1}}]
    fast, general = watch_both(db.items, pipeline, full_document=full_document)
    db.items.insert_many([{"_id": 1, "x": 1}, {"_id": 2, "x": 2}, {"_id": 3, "y": {"z": 0}}])
    db.items.update_many({}, {"$inc": {"n": 1}})
    db.items.delete_many({"_id": {"$gt": 1}})
    events = same_results(fast, general)
    kinds = [e["operationType"] for e in events]
    assert kinds[0] == "insert" and kinds[-2:] == ["delete", "delete"]
    # Updates: without a full document, or with 3's looked up (deleted) or 2's image.
    assert kinds.count("update") == {"default": 3, "updateLookup": 2,
                                     "whenAvailable": 3}[full_document]


def test_logical_operators_and_namespace_conditions(db: Db) -> None:
    pipeline: Pipeline = [{"$match": {"$and": [
        {"$nor": [{"ns.coll": "b", "operationType": "delete"}, {"fullDocument.skip": True}]},
        {"$or": [{"ns": {"db": db.name, "coll": "a"}}, {"ns.db": db.name, "ns.coll": "b"},
                 {"documentKey._id": {"$in": [7, 8]}}]},
        {"operationType": {"$ne": "replace"}},
    ]}}]
    fast, general = watch_both(db, pipeline, full_document="whenAvailable")
    for name in ("a", "b", "c"):
        db[name].insert_many([{"_id": i, "skip": i == 2} for i in range(10)])
        db[name].update_many({"_id": {"$lt": 5}}, {"$set": {"x": 1}})
        db[name].replace_one({"_id": 6}, {"y": 1})
        db[name].delete_many({"_id": {"$gt": 6}})
    events = same_results(fast, general)
    assert {(e["ns"]["coll"], e["operationType"]) for e in events} >= {
        ("a", "insert"), ("a", "delete"), ("b", "update"), ("c", "insert"), ("c", "delete")}
    assert not any(e["ns"]["coll"] == "b" and e["operationType"] == "delete" for e in events)


def test_planner_stream_with_expr_on_the_description(db: Db) -> None:
    """The generated planner pipeline's shape: its ``$expr`` reads the update description, so
    updates of watched collections take the general path; other collections are skipped."""
    changed = {"$map": {"input": {"$objectToArray": {
        "$ifNull": ["$updateDescription.updatedFields", {}]}}, "as": "f", "in": "$$f.k"}}
    pipeline: Pipeline = [{"$match": {"$or": [
        {"ns.coll": "orders", "$or": [
            {"operationType": {"$in": ["insert", "replace", "delete", "drop", "rename"]}},
            {"operationType": "update", "$expr": {"$in": ["status", changed]}}]},
        {"operationType": {"$in": ["dropDatabase", "invalidate"]}}]}}]
    fast, general = watch_both(db, pipeline)
    db.orders.insert_many([{"_id": i, "status": "new", "n": 0} for i in range(4)])
    db.orders.update_one({"_id": 1}, {"$set": {"status": "paid"}})
    db.orders.update_one({"_id": 2}, {"$set": {"n": 1}})
    task_writes(db, "orders_tasks")
    db.orders.replace_one({"_id": 3}, {"status": "x"})
    db.orders.drop()
    events = same_results(fast, general)
    assert [e["operationType"] for e in events] == ["insert"] * 4 + ["update", "replace", "drop"]


def test_resume_after_a_filtered_out_event(db: Db) -> None:
    pipeline = wakeup_pipeline(["tasks"])
    with db.watch(pipeline, full_document="updateLookup", max_await_time_ms=50) as stream:
        db.tasks.insert_one({"_id": 1, "status": "processing", "lease": {"owner": ME}})
        db.tasks.update_one({"_id": 1}, {"$set": {"attempts": 1}})
        db.other.insert_one({"_id": 1})
        events, token = read_all(stream)
    assert events == []  # task 1 was claimed by this instance before the read
    fast, general = watch_both(db, pipeline, full_document="updateLookup", resume_after=token)
    db.tasks.update_one({"_id": 1}, {"$set": {"status": "completed", "lastOwner": OTHER}})
    db.other.insert_one({"_id": 2})
    events = same_results(fast, general)
    assert [e["fullDocument"]["status"] for e in events] == ["completed"]
    fast, general = watch_both(db, pipeline, full_document="updateLookup", start_after=token)
    assert len(same_results(fast, general)) == 1


def test_expanded_events_and_conditions_on_other_fields(db: Db) -> None:
    pipeline: Pipeline = [
        {"$match": {"operationType": {"$in": ["insert", "create", "drop"]},
                    "clusterTime": {"$exists": True}, "collectionUUID": {"$exists": True},
                    "txnNumber": {"$exists": False}, "to": {"$exists": False}}},
        {"$project": {"operationType": 1, "collectionUUID": 1, "ns": 1}}]
    fast, general = watch_both(db, pipeline, show_expanded_events=True)
    db.create_collection("a")
    db.a.insert_one({"_id": 1})
    db.a.drop()
    events = same_results(fast, general)
    assert [e["operationType"] for e in events] == ["create", "insert", "drop"]


def test_matches_on_the_description_take_the_general_path(db: Db) -> None:
    pipeline: Pipeline = [
        {"$match": {"updateDescription.updatedFields.n": {"$exists": True}}},
        {"$project": {"updateDescription": 1}}]
    fast, general = watch_both(db.items, pipeline)
    db.items.insert_one({"_id": 1, "n": 0})
    db.items.update_one({"_id": 1}, {"$set": {"n": 1}})
    db.items.update_one({"_id": 1}, {"$set": {"m": 1}})
    events = same_results(fast, general)
    assert [e["updateDescription"]["updatedFields"] for e in events] == [{"n": 1}]


# -- the split of a filter (in process) ---------------------------------------------------------


def test_partial_evaluation_of_filters() -> None:
    ns = {"db": "d", "coll": "c"}
    static = {"operationType": "update", "ns": ns}
    assert change_filters.partial({"operationType": "insert"}, static) is False
    assert change_filters.partial({"ns.coll": {"$in": ["c"]}}, static) is True
    assert change_filters.partial({"ns": ns, "fullDocument.a": True}, static) == {
        "fullDocument.a": True}
    assert change_filters.partial(
        {"$or": [{"operationType": "delete"}, {"fullDocument.a": 1}]}, static) == {
        "$or": [{"fullDocument.a": 1}]}
    assert change_filters.partial(
        {"$nor": [{"operationType": "update"}, {"fullDocument.a": 1}]}, static) is False
    assert change_filters.partial({"$nor": [{"operationType": "delete"}]}, static) is True
    assert change_filters.partial(
        {"$and": [{"ns.db": "d"}, {"documentKey._id": 1}]}, static) == {
        "$and": [{"documentKey._id": 1}]}
    filters = change_filters.EntryFilter([{"ns.coll": "c"}, {"fullDocument.a": 1}])
    verdict = filters.decide("insert", "d", "c")
    assert isinstance(verdict, change_filters.Residual)
    assert verdict.fields == {"fullDocument"}
    assert verdict.on_full_document
    assert filters.decide("insert", "d", "x") is False
    mixed = change_filters.EntryFilter([{"$or": [{"fullDocument.a": 1}, {"documentKey._id": 1}]}])
    verdict = mixed.decide("update", "d", "c")
    assert isinstance(verdict, change_filters.Residual)
    assert verdict.fields == {"fullDocument", "documentKey"}
    assert not verdict.on_full_document
    assert change_filters.EntryFilter([]).decide("delete", "d", None) is True
    for general in ({"$expr": True}, {"_id": 1}, {"updateDescription.x": 1},
                    {"fullDocument.a": {"$regex": "x"}}, {"$comment": "x"},
                    {"ns.coll": {"$bad": 1}}):
        split = change_filters.entry_filter([general])
        assert split is not None and split.decide("insert", "d", "c") is change_filters.GENERAL
    # Decided for other kinds all the same.
    split = change_filters.entry_filter([{"ns.coll": "x", "$expr": {"$divide": [1, 0]}}])
    assert split is not None and split.decide("update", "d", "c") is False
    for malformed in ({"$or": []}, {"$and": {}}, {"$nor": [1]}):
        assert change_filters.entry_filter([malformed]) is None


def test_projection_matches_the_compiled_projection() -> None:
    from runtime.embedded import compiled

    spec = {"a": 1, "b.c": 1, "b.d.e": 1, "f.g": 1}
    docs: list[dict[str, Any]] = [
        {"_id": 1, "z": 0, "b": {"x": 1, "d": {"e": 2, "y": 3}, "c": 4}, "a": 5, "f": 3},
        {"f": {"g": None, "h": 1}, "b": None},
        {}]
    fast = change_filters.InclusionProjection(spec)
    general = compiled.inclusion_projection(spec)
    for doc in docs:
        assert list(fast(doc).items()) == list(general(doc).items())
    with pytest.raises(compiled.Unsupported):
        fast({"b": [{"c": 1}]})


def test_fast_and_general_collect_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same log read by streams on the fast path and (patched) on the general path."""
    store = DataStore(1 << 24, None)
    unit = WriteUnit()
    tasks = store.ensure_collection(unit, "app", "tasks")
    meta = store.ensure_collection(unit, "app", "meta")
    other = store.ensure_collection(unit, "app", "other")
    store.commit(unit)

    def write(step: Any) -> None:
        unit = WriteUnit()
        step(unit)
        store.commit(unit)

    docs: dict[int, dict[str, Any]] = {}
    for i in range(40):
        docs[i] = {"_id": i, "reactor": "r1", "status": "pending", "nextRunAt": i}
        write(lambda u, d=docs[i]: store.insert(u, tasks, d))
        write(lambda u, i=i: store.insert(u, other, {"_id": i}))
    write(lambda u: store.insert(u, meta, {"_id": "leader", "owner": OTHER}))
    for i in range(40):
        owner = ME if i % 3 else OTHER
        new = dict(docs[i], status="processing", lease={"owner": owner})
        write(lambda u, old=docs[i], new=new: store.replace(u, tasks, old, new, False))
        docs[i] = new
    for i in range(0, 40, 2):
        new = dict(docs[i], status="completed", lastOwner=docs[i]["lease"]["owner"])
        del new["lease"]
        if i % 8 == 0:
            write(lambda u, old=docs[i]: store.delete(u, tasks, old))
        else:
            whole = i % 4 == 2
            write(lambda u, old=docs[i], new=new, whole=whole:
                  store.replace(u, tasks, old, new, whole))
    log, catalog = store.changelog, store.catalog
    start = log.entries[0].cluster_time
    cases = [(None, wakeup_pipeline(["tasks"]), "updateLookup"),
             ("tasks", wakeup_pipeline(["tasks"])[:1], "default"),
             ("tasks", [{"$project": {"fullDocument": 1}}], "whenAvailable"),
             (None, [{"$match": {"ns.coll": "meta"}}], "updateLookup"),
             (None, [{"$match": {"$or": [
                 {"ns.coll": "other", "$expr": {"$eq": ["$operationType", "insert"]}},
                 {"ns.coll": "tasks", "operationType": "delete"}]}}], "default")]
    general = change_streams._entry_filter
    for coll, pipeline, full_document in cases:
        results = []
        for fast in (True, False):
            monkeypatch.setattr(change_streams, "_entry_filter",
                                general if fast else lambda stream: None)
            stream = change_streams.open_stream(1, "app", coll, [{"$changeStream": {
                "fullDocument": full_document, "startAtOperationTime": start}}, *pipeline], log)
            batches = []
            while batch := change_streams.collect(stream, log, catalog, 7, {}):
                batches.append([list(event.items()) for event in batch])
            assert isinstance(stream.entry_filter, change_filters.EntryFilter) is fast
            results.append((batches, stream.position, stream.position_token))
        assert results[0] == results[1]
        assert results[0][0], pipeline
