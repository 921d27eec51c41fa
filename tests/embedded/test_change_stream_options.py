"""Change-stream options through PyMongo: fullDocument, fullDocumentBeforeChange,
showExpandedEvents, ``updateDescription`` details and the stages allowed after ``$changeStream``.

Valid against a real MongoDB 7.0 replica set (``MONGODB_URI``) unless marked ``embedded_only``.
Reading a stream never sleeps: ``try_next`` issues one ``getMore`` that the server holds until a
change commits or the await time passes, under a generous deadline.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from bson import Binary
from change_stream_support import (
    AWAIT_MS,
    DEADLINE_S,
    Change,
    changes,
    expect_sentinel,
    next_change,
)
from pymongo import AsyncMongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]

IMAGES_ON = {"changeStreamPreAndPostImages": {"enabled": True}}
NO_MATCHING_DOCUMENT = 47


def with_images(db: Db, name: str) -> Coll:
    """A new collection with change-stream pre- and post-images enabled."""
    return db.create_collection(name, **IMAGES_ON)


# -- fullDocument ------------------------------------------------------------------------------


def test_update_lookup_returns_the_current_document(db: Db) -> None:
    db.items.insert_one({"_id": 1, "n": 0})
    with db.items.watch(full_document="updateLookup", max_await_time_ms=AWAIT_MS) as stream:
        db.items.update_one({"_id": 1}, {"$set": {"n": 1}})
        db.items.update_one({"_id": 1}, {"$set": {"n": 2}})
        db.items.insert_one({"_id": 2, "n": 0})
        db.items.update_one({"_id": 2}, {"$inc": {"n": 1}})
        db.items.delete_one({"_id": 2})
        first, second, insert, gone, delete = changes(stream, 5)
    # Looked up when the event is read: both updates of 1 see its latest version.
    assert first["fullDocument"] == {"_id": 1, "n": 2}
    assert second["fullDocument"] == {"_id": 1, "n": 2}
    assert first["updateDescription"]["updatedFields"] == {"n": 1}
    assert insert["fullDocument"] == {"_id": 2, "n": 0}
    assert gone["operationType"] == "update" and gone["fullDocument"] is None
    assert delete["operationType"] == "delete" and "fullDocument" not in delete


def test_when_available_returns_the_post_image_of_each_update(db: Db) -> None:
    coll = with_images(db, "imaged")
    coll.insert_one({"_id": 1, "n": 0})
    with coll.watch(full_document="whenAvailable", max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"n": 1}})
        coll.update_one({"_id": 1}, {"$set": {"n": 2}})
        first, second = changes(stream, 2)
    assert first["fullDocument"] == {"_id": 1, "n": 1}
    assert second["fullDocument"] == {"_id": 1, "n": 2}


def test_when_available_without_images_gives_null(db: Db) -> None:
    db.plain.insert_one({"_id": 1, "n": 0})
    with db.plain.watch(full_document="whenAvailable", max_await_time_ms=AWAIT_MS) as stream:
        db.plain.update_one({"_id": 1}, {"$set": {"n": 1}})
        change = next_change(stream)
    assert "fullDocument" in change and change["fullDocument"] is None


def test_required_post_image(db: Db) -> None:
    coll = with_images(db, "imaged")
    coll.insert_one({"_id": 1, "n": 0})
    with coll.watch(full_document="required", max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"n": 1}})
        assert next_change(stream)["fullDocument"] == {"_id": 1, "n": 1}

    db.plain.insert_one({"_id": 1, "n": 0})
    with db.plain.watch(full_document="required", max_await_time_ms=AWAIT_MS) as stream:
        db.plain.update_one({"_id": 1}, {"$set": {"n": 1}})
        with pytest.raises(OperationFailure) as info:
            next_change(stream)
    assert info.value.code == NO_MATCHING_DOCUMENT


def test_images_follow_coll_mod(db: Db) -> None:
    db.toggled.insert_one({"_id": 1, "n": 0})
    with db.toggled.watch(full_document="whenAvailable",
                          full_document_before_change="whenAvailable",
                          max_await_time_ms=AWAIT_MS) as stream:
        db.toggled.update_one({"_id": 1}, {"$set": {"n": 1}})
        db.command("collMod", "toggled", **IMAGES_ON)
        db.toggled.update_one({"_id": 1}, {"$set": {"n": 2}})
        db.command("collMod", "toggled", changeStreamPreAndPostImages={"enabled": False})
        db.toggled.update_one({"_id": 1}, {"$set": {"n": 3}})
        before, during, after = changes(stream, 3)
    assert (before["fullDocument"], before["fullDocumentBeforeChange"]) == (None, None)
    assert during["fullDocument"] == {"_id": 1, "n": 2}
    assert during["fullDocumentBeforeChange"] == {"_id": 1, "n": 1}
    assert (after["fullDocument"], after["fullDocumentBeforeChange"]) == (None, None)


def test_unknown_full_document_mode_is_rejected(db: Db) -> None:
    with pytest.raises(OperationFailure):
        db.command("aggregate", "items",
                   pipeline=[{"$changeStream": {"fullDocument": "sometimes"}}], cursor={})
    with pytest.raises(OperationFailure):
        db.command("aggregate", "items",
                   pipeline=[{"$changeStream": {"fullDocumentBeforeChange": "on"}}], cursor={})


# -- fullDocumentBeforeChange ------------------------------------------------------------------


def test_pre_images_on_update_replace_and_delete(db: Db) -> None:
    coll = with_images(db, "history")
    coll.insert_one({"_id": 1, "v": "a"})
    with coll.watch(full_document_before_change="whenAvailable",
                    max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"v": "b"}})
        coll.replace_one({"_id": 1}, {"v": "c"})
        coll.delete_one({"_id": 1})
        coll.insert_one({"_id": 2, "v": "new"})
        update, replace, delete, insert = changes(stream, 4)
    assert update["fullDocumentBeforeChange"] == {"_id": 1, "v": "a"}
    assert replace["fullDocumentBeforeChange"] == {"_id": 1, "v": "b"}
    assert replace["fullDocument"] == {"_id": 1, "v": "c"}
    assert delete["fullDocumentBeforeChange"] == {"_id": 1, "v": "c"}
    assert "fullDocumentBeforeChange" not in insert


def test_pre_images_off_by_default_and_null_when_unavailable(db: Db) -> None:
    coll = with_images(db, "history")
    coll.insert_one({"_id": 1, "v": "a"})
    db.plain.insert_one({"_id": 1, "v": "a"})
    with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
        coll.update_one({"_id": 1}, {"$set": {"v": "b"}})
        assert "fullDocumentBeforeChange" not in next_change(stream)
    with db.plain.watch(full_document_before_change="off", max_await_time_ms=AWAIT_MS) as stream:
        db.plain.update_one({"_id": 1}, {"$set": {"v": "b"}})
        assert "fullDocumentBeforeChange" not in next_change(stream)
    with db.plain.watch(full_document_before_change="whenAvailable",
                        max_await_time_ms=AWAIT_MS) as stream:
        db.plain.delete_one({"_id": 1})
        change = next_change(stream)
    assert "fullDocumentBeforeChange" in change and change["fullDocumentBeforeChange"] is None


def test_required_pre_image(db: Db) -> None:
    coll = with_images(db, "history")
    coll.insert_one({"_id": 1, "v": "a"})
    with coll.watch(full_document_before_change="required", max_await_time_ms=AWAIT_MS) as stream:
        coll.delete_one({"_id": 1})
        assert next_change(stream)["fullDocumentBeforeChange"] == {"_id": 1, "v": "a"}

    db.plain.insert_one({"_id": 1, "v": "a"})
    with db.plain.watch(full_document_before_change="required",
                        max_await_time_ms=AWAIT_MS) as stream:
        db.plain.update_one({"_id": 1}, {"$set": {"v": "b"}})
        with pytest.raises(OperationFailure) as info:
            next_change(stream)
    assert info.value.code == NO_MATCHING_DOCUMENT


# -- showExpandedEvents ------------------------------------------------------------------------


def test_expanded_events_report_ddl(db: Db) -> None:
    db.anchor.insert_one({"_id": "seed"})
    with db.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
        db.create_collection("fresh")
        db.fresh.insert_one({"_id": 1})
        db.fresh.create_index("x", name="x_1")
        db.fresh.drop_index("x_1")
        db.command("collMod", "fresh", **IMAGES_ON)
        create, insert, create_index, drop_index, modify = changes(stream, 5)
    for change in (create, insert, create_index, drop_index, modify):
        assert change["ns"] == {"db": db.name, "coll": "fresh"}
        assert isinstance(change["collectionUUID"], Binary)
    assert len({c["collectionUUID"] for c in (create, insert, modify)}) == 1
    assert create["operationType"] == "create"
    assert "operationDescription" in create
    assert insert["operationType"] == "insert"
    assert create_index["operationType"] == "createIndexes"
    [index] = create_index["operationDescription"]["indexes"]
    assert (index["name"], index["key"]) == ("x_1", {"x": 1})
    assert drop_index["operationType"] == "dropIndexes"
    assert [i["name"] for i in drop_index["operationDescription"]["indexes"]] == ["x_1"]
    assert modify["operationType"] == "modify"
    assert modify["operationDescription"] == IMAGES_ON
    assert modify["stateBeforeChange"]["collectionOptions"]["uuid"] == modify["collectionUUID"]


def test_ddl_events_hidden_without_expanded_events(db: Db) -> None:
    db.anchor.insert_one({"_id": "seed"})
    with db.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.create_collection("fresh")
        db.fresh.create_index("x")
        db.fresh.drop_index("x_1")
        db.command("collMod", "fresh", **IMAGES_ON)
        sentinel = {"_id": "sentinel"}
        db.anchor.insert_one(sentinel)
        change = expect_sentinel(stream, sentinel)
    assert "collectionUUID" not in change


def test_expanded_rename_with_drop_target(db: Db) -> None:
    db.source.insert_one({"_id": 1})
    db.create_collection("target")  # exists, to be replaced
    with db.source.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
        db.source.rename("target", dropTarget=True)
        rename, invalidate = changes(stream, 2)
    assert rename["operationType"] == "rename"
    assert rename["to"] == {"db": db.name, "coll": "target"}
    description = rename["operationDescription"]
    assert description["to"] == {"db": db.name, "coll": "target"}
    assert isinstance(description["dropTarget"], Binary)
    assert description["dropTarget"] != rename["collectionUUID"]
    assert invalidate["operationType"] == "invalidate"


# -- updateDescription -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "update", "updated", "paths"),
    [
        # A numeric field name of a document reads like an array index: spelled out.
        ({"_id": 1, "a": {"1": 1}}, {"$set": {"a.1": 2}}, {"a.1": 2}, {"a.1": ["a", "1"]}),
        # Array indices are integers in the spelled-out path.
        ({"_id": 1, "a": [{"1": 1}]}, {"$set": {"a.0.1": 2}}, {"a.0.1": 2},
         {"a.0.1": ["a", 0, "1"]}),
        # Nothing ambiguous: an empty document.
        ({"_id": 1, "a": [1, 2]}, {"$set": {"a.1": 5, "b": 1}}, {"a.1": 5, "b": 1}, {}),
    ],
)
def test_disambiguated_paths(db: Db, document: dict[str, Any], update: dict[str, Any],
                             updated: dict[str, Any], paths: dict[str, Any]) -> None:
    db.items.insert_one(document)
    with db.items.watch(max_await_time_ms=AWAIT_MS) as plain, \
            db.items.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as expanded:
        db.items.update_one({"_id": 1}, update)
        without = next_change(plain)["updateDescription"]
        described = next_change(expanded)["updateDescription"]
    assert "disambiguatedPaths" not in without
    assert without["updatedFields"] == updated
    assert described["updatedFields"] == updated
    assert described["disambiguatedPaths"] == paths
    for components in described["disambiguatedPaths"].values():
        assert [type(c) for c in components] == [
            int if isinstance(c, int) else str for c in components]


def test_update_description_of_nested_and_array_changes(db: Db) -> None:
    db.items.insert_one({"_id": 1, "doc": {"a": 1, "b": {"c": 2}}, "list": [{"k": 1}, {"k": 2}]})
    with db.items.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.items.update_one({"_id": 1}, {"$set": {"doc.b.c": 3, "list.1.k": 20, "doc.new": True},
                                         "$unset": {"doc.a": ""}})
        db.items.update_one({"_id": 1}, {"$push": {"list": {"k": 3}}})
        db.items.update_one({"_id": 1}, {"$rename": {"doc": "renamed"}})
        nested, pushed, renamed = changes(stream, 3)
    assert nested["updateDescription"]["updatedFields"] == {
        "doc.b.c": 3, "list.1.k": 20, "doc.new": True}
    assert nested["updateDescription"]["removedFields"] == ["doc.a"]
    assert pushed["updateDescription"]["updatedFields"] == {"list.2": {"k": 3}}
    assert renamed["updateDescription"]["removedFields"] == ["doc"]
    assert renamed["updateDescription"]["updatedFields"] == {
        "renamed": {"b": {"c": 3}, "new": True}}


# -- further stages ----------------------------------------------------------------------------


def test_match_filters_events(db: Db) -> None:
    db.items.insert_one({"_id": "seed"})
    pipeline = [{"$match": {"$or": [{"operationType": "delete"},
                                     {"fullDocument.important": True}]}}]
    with db.items.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
        db.items.insert_one({"_id": 1})
        db.items.insert_one({"_id": 2, "important": True})
        db.items.update_one({"_id": 1}, {"$set": {"x": 1}})
        db.items.delete_one({"_id": 1})
        important, delete = changes(stream, 2)
    assert important["documentKey"] == {"_id": 2}
    assert delete["operationType"] == "delete"


def test_project_and_add_fields_keep_the_resume_token(db: Db) -> None:
    db.items.insert_one({"_id": "seed"})
    pipeline = [
        {"$project": {"operationType": 1, "documentKey": 1, "fullDocument.n": 1}},
        {"$addFields": {"doubled": {"$multiply": ["$fullDocument.n", 2]}}},
    ]
    with db.items.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
        db.items.insert_many([{"_id": 1, "n": 1, "big": "x" * 100}, {"_id": 2, "n": 5}])
        first = next_change(stream)
    assert first == {"_id": first["_id"], "operationType": "insert", "documentKey": {"_id": 1},
                     "fullDocument": {"n": 1}, "doubled": 2}
    with db.items.watch(pipeline, resume_after=first["_id"],
                        max_await_time_ms=AWAIT_MS) as resumed:
        assert next_change(resumed)["doubled"] == 10


@pytest.mark.parametrize("stage", [
    {"$project": {"_id": 0}},
    {"$set": {"_id": "replaced"}},
    {"$unset": "_id"},
])
def test_removing_or_changing_the_resume_token_is_fatal(db: Db, stage: dict[str, Any]) -> None:
    db.items.insert_one({"_id": "seed"})
    with db.items.watch([stage], max_await_time_ms=AWAIT_MS) as stream:
        db.items.insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as info:
            next_change(stream)
    assert info.value.code == 280
    assert info.value.has_error_label("NonResumableChangeStreamError")


def test_stages_that_are_not_allowed(db: Db) -> None:
    with pytest.raises(OperationFailure):
        db.items.watch([{"$group": {"_id": "$operationType"}}])
    with pytest.raises(OperationFailure) as info:
        db.items.watch([{"$unsupported": "foo"}])
    assert info.value.code == 40324
    with pytest.raises(OperationFailure):
        db.items.watch([{"$changeStream": {}}])


@pytest.mark.embedded_only
def test_invalidate_closes_the_stream_even_when_filtered_out(db: Db) -> None:
    db.items.insert_one({"_id": "seed"})
    with db.items.watch([{"$match": {"operationType": "insert"}}],
                        max_await_time_ms=AWAIT_MS) as stream:
        db.items.insert_one({"_id": 1})
        db.items.drop()
        assert next_change(stream)["documentKey"] == {"_id": 1}
        deadline = time.monotonic() + DEADLINE_S
        while stream.alive:
            assert stream.try_next() is None
            assert time.monotonic() < deadline


@pytest.mark.embedded_only
def test_first_batch_of_zero_keeps_the_resume_point(db: Db) -> None:
    db.items.insert_one({"_id": "seed"})
    with db.items.watch(max_await_time_ms=AWAIT_MS) as stream:
        db.items.insert_many([{"_id": 1}, {"_id": 2}])
        token = next_change(stream)["_id"]
    reply = db.command("aggregate", "items",
                       pipeline=[{"$changeStream": {"resumeAfter": token}}],
                       cursor={"batchSize": 0})
    cursor = reply["cursor"]
    assert cursor["firstBatch"] == []
    assert cursor["postBatchResumeToken"] == token
    more = db.command("getMore", cursor["id"], collection="items", maxTimeMS=AWAIT_MS)
    assert [c["documentKey"] for c in more["cursor"]["nextBatch"]] == [{"_id": 2}]
    db.command("killCursors", "items", cursors=[cursor["id"]])


@pytest.mark.embedded_only
def test_batch_ending_on_a_drop_delivers_the_invalidate_next(db: Db) -> None:
    db.items.insert_one({"_id": "seed"})
    reply = db.command("aggregate", "items", pipeline=[{"$changeStream": {}}], cursor={})
    cursor_id = reply["cursor"]["id"]
    db.items.insert_one({"_id": 1})
    db.items.drop()
    first = db.command("getMore", cursor_id, collection="items", batchSize=2)["cursor"]
    assert [c["operationType"] for c in first["nextBatch"]] == ["insert", "drop"]
    assert first["id"] == cursor_id
    assert first["postBatchResumeToken"] == first["nextBatch"][-1]["_id"]
    second = db.command("getMore", cursor_id, collection="items", batchSize=2)["cursor"]
    assert [c["operationType"] for c in second["nextBatch"]] == ["invalidate"]
    assert second["id"] == 0


# -- async client ------------------------------------------------------------------------------


async def test_async_client_images_and_expanded_events(
    async_client: AsyncMongoClient[dict[str, Any]],
) -> None:
    name = f"t_{uuid.uuid4().hex[:10]}_async_opts"
    database = async_client[name]
    try:
        coll = await database.create_collection("items", **IMAGES_ON)
        await coll.insert_one({"_id": 1, "n": 0})
        async with await coll.watch(full_document="required",
                                    full_document_before_change="required",
                                    show_expanded_events=True,
                                    max_await_time_ms=AWAIT_MS) as stream:
            await coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
            await coll.create_index("n")
            seen: list[Change] = []
            deadline = time.monotonic() + DEADLINE_S
            while len(seen) < 2 and time.monotonic() < deadline:
                change = await stream.try_next()
                if change is not None:
                    seen.append(change)
        update, create_index = seen
        assert update["fullDocument"] == {"_id": 1, "n": 1}
        assert update["fullDocumentBeforeChange"] == {"_id": 1, "n": 0}
        assert update["updateDescription"]["disambiguatedPaths"] == {}
        assert create_index["operationType"] == "createIndexes"
    finally:
        await async_client.drop_database(name)
