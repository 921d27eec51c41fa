"""Index maintenance on the write path: the shortcuts must keep every index exactly right.

A write works out each index's keys once (the uniqueness check computes those of the unique
indexes, storing reuses them), skips the indexes whose fields kept the same values, and
computes every key before anything changes. These tests compare, after random sequences of
inserts, updates, replacements and deletes, each index's entries with what an independent
rebuild from the stored documents gives (in process), and the documents each index serves with
a model (through PyMongo against the server, also across a restart with ``--dbpath`` and
inside transactions); duplicate keys must fail with mongod's error and change nothing.
"""

from __future__ import annotations

import datetime
import itertools
import math
from typing import Any

import bson
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.collection import Collection as PyCollection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from support import ServerFactory

from runtime.embedded import collation as collations
from runtime.embedded import engine
from runtime.embedded.changelog import ENTRY_OVERHEAD_BYTES
from runtime.embedded.datastore import DataStore, WriteUnit
from runtime.embedded.errors import WriteError
from runtime.embedded.indexes import Index, parse_index_spec
from runtime.embedded.ordering import (
    BOOLEAN,
    MISSING,
    NULL,
    NUMBER,
    OBJECT_ID,
    UNDEFINED,
    Key,
    Reverse,
    get_path,
    id_key,
    value_key,
)
from runtime.embedded.storage import Collection
from runtime.embedded.wire import CODEC

Doc = dict[str, Any]

#: Index specifications covering every kind of index the write path maintains.
INDEXES: list[Doc] = [
    {"key": {"a": 1, "b": 1}, "name": "a_b_unique", "unique": True},
    {"key": {"b": -1, "c": 1}, "name": "b_desc_c"},
    {"key": {"c": 1}, "name": "c_sparse", "sparse": True},
    {"key": {"a": 1}, "name": "a_partial", "partialFilterExpression": {"b": {"$gt": 0}}},
    {"key": {"tags": 1, "a": 1}, "name": "tags_multikey"},
    {"key": {"d.e": 1}, "name": "dotted"},
    {"key": {"t": 1}, "name": "ttl", "expireAfterSeconds": 0},
    {"key": {"u": 1}, "name": "u_unique_sparse_collated", "unique": True, "sparse": True,
     "collation": {"locale": "en", "strength": 2}},
]
FIELDS = ["a", "b", "c", "tags", "d", "t", "u", "other"]
MOMENT = datetime.datetime(2024, 5, 1, 12, 0, 0)
OID = ObjectId("65f000000000000000000001")
#: Values that are equal across types (1, 1.0), differ only by case (under the collation),
#: are arrays (multikey), nested, null, NaN...
VALUES: list[Any] = [None, 0, 1, 1.0, 2, -1.5, math.nan, "x", "X", "y", True, False, MOMENT,
                     OID, [], [1, 2], [2, "x"], [[1]], {"e": 1}, {"e": "x"},
                     [{"e": 1}, {"e": 2}], {"f": 1}]
_MISSING = "<missing>"

fields = st.dictionaries(st.sampled_from(FIELDS),
                         st.sampled_from(VALUES + [_MISSING]), max_size=len(FIELDS))
operations = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 5), fields),
    st.tuples(st.just("update"), st.integers(0, 5), fields),
    st.tuples(st.just("replace"), st.integers(0, 5), fields),
    st.tuples(st.just("delete"), st.integers(0, 5), st.just({})),
), min_size=1, max_size=25)


# -- an independent rebuild: every index's entries from the stored documents -------------------

def reference_keys(index: Index, doc: Doc) -> set[tuple[Any, ...]]:
    """The component tuples ``doc`` contributes to ``index``, by the general rule only (one
    key set per field, their cross product), without any of the write path's shortcuts."""
    spec = index.spec
    if spec.partial_filter is not None and not engine.matches(spec.partial_filter, doc, {}):
        return set()
    per_field: list[list[Key]] = []
    present = False
    for path in spec.fields:
        value = get_path(doc, path)
        present = present or value is not MISSING
        if index.collation is not None:
            value = collations.transform(value, index.collation.key)
        per_field.append(_field_reference_keys(value))
    if spec.sparse and not present:
        return set()
    return {tuple(Reverse(k) if d < 0 else k for k, d in zip(combo, spec.directions, strict=True))
            for combo in itertools.product(*per_field)}


def _field_reference_keys(value: Any) -> list[Key]:
    if value is MISSING:
        return [(NULL,)]
    if not isinstance(value, list):
        return [value_key(value)]
    if not value:
        return [(UNDEFINED,)]
    keys: list[Key] = []
    for element in value:
        keys.append(value_key(element))
        if isinstance(element, list):
            keys.extend(value_key(inner) for inner in element)
    return list(dict.fromkeys(keys))


def assert_indexes_match_rebuild(coll: Collection) -> None:
    """Every index holds exactly the entries a rebuild from the documents gives."""
    for name, index in coll.indexes.items():
        expected = {components + (key,) for key, doc in coll.docs.items()
                    for components in reference_keys(index, doc)}
        stored = list(index.entries)
        assert len(stored) == len(set(stored)), f"index {name} holds duplicate entries"
        assert set(stored) == expected, f"index {name} differs from a rebuild"
        if any(isinstance(get_path(doc, path), list) for doc in coll.docs.values()
               if reference_keys(index, doc) for path in index.spec.fields):
            assert index.multikey, f"index {name} holds arrays but is not multikey"


def expected_duplicate(coll: Collection, doc: Doc, key: Key, inserting: bool) -> str | None:
    """The index a write of ``doc`` must fail on (first unique index with a shared key)."""
    if inserting and key in coll.docs:
        return "_id_"
    for name, index in coll.indexes.items():
        if not index.spec.unique:
            continue
        mine = reference_keys(index, doc)
        for other_key, other in coll.docs.items():
            if other_key != key and mine & reference_keys(index, other):
                return name
    return None


# -- in process ---------------------------------------------------------------------------------

def _store() -> tuple[DataStore, Collection]:
    store = DataStore(64 << 20, None)
    unit = WriteUnit()
    coll = store.ensure_collection(unit, "db", "items")
    for raw in INDEXES:
        store.create_index(unit, coll, parse_index_spec(raw))
    store.commit(unit)
    return store, coll


def _document(doc_id: int, values: Doc) -> Doc:
    return {"_id": doc_id, **{k: v for k, v in values.items() if v != _MISSING}}


def _snapshot(coll: Collection) -> tuple[dict[Key, Doc], dict[str, list[Any]]]:
    return dict(coll.docs), {name: list(index.entries) for name, index in coll.indexes.items()}


def _apply(store: DataStore, coll: Collection, op: str, doc_id: int, values: Doc) -> None:
    """One write through the data store, checked against the model as it goes."""
    key = id_key(doc_id)
    old = coll.docs.get(key)
    if op == "delete" or (op != "insert" and old is None):
        if old is not None:
            unit = WriteUnit()
            store.delete(unit, coll, old)
            store.commit(unit)
        return
    if op in ("insert", "replace"):
        new = _document(doc_id, values)
    else:  # an update: the old document with some fields set or removed, others shared
        assert old is not None
        new = dict(old)
        for name, value in values.items():
            if value == _MISSING:
                new.pop(name, None)
            else:
                new[name] = value
    duplicate = expected_duplicate(coll, new, key, op == "insert")
    before = _snapshot(coll)
    unit = WriteUnit()
    try:
        if op == "insert":
            store.insert(unit, coll, new)
        else:
            assert old is not None
            store.replace(unit, coll, old, new, op == "replace")
    except WriteError as exc:
        assert duplicate is not None, f"unexpected {exc.message}"
        assert exc.code == 11000
        assert f"index: {duplicate} dup key:" in exc.message
        assert _snapshot(coll) == before, "a refused write changed the collection"
        return
    store.commit(unit)
    assert duplicate is None, f"expected a duplicate key on {duplicate}"


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_random_writes_keep_every_index_equal_to_a_rebuild(ops: list[tuple[str, int, Doc]]
                                                          ) -> None:
    """Any sequence of writes leaves each index as a rebuild would; duplicates fail as the
    model says, changing nothing."""
    store, coll = _store()
    for op, doc_id, values in ops:
        _apply(store, coll, op, doc_id, values)
        assert_indexes_match_rebuild(coll)


def _count_key_computations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the name of each index whose keys are computed, once per computation."""
    computed: list[str] = []
    original = Index.keys_for

    def counting(index: Index, doc: Doc) -> list[tuple[Any, ...]]:
        computed.append(index.spec.name)
        return original(index, doc)

    monkeypatch.setattr(Index, "keys_for", counting)
    return computed


def test_unchanged_indexes_are_not_recomputed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An update of fields no index covers computes no index keys at all; one of a single
    indexed field recomputes only the indexes over it."""
    store, coll = _store()
    unit = WriteUnit()
    old = {"_id": 1, "a": 1, "b": 2, "c": 3, "tags": [1, 2], "d": {"e": 1}, "t": MOMENT, "u": "x"}
    store.insert(unit, coll, old)
    store.commit(unit)
    computed = _count_key_computations(monkeypatch)
    unit = WriteUnit()
    new = {**old, "other": 5}
    store.replace(unit, coll, old, new, False)
    # the partial index cannot be judged unchanged from its fields alone
    assert sorted(computed) == ["a_partial", "a_partial"]
    computed.clear()
    store.replace(unit, coll, new, {**new, "c": 4}, False)
    assert sorted(computed) == ["a_partial"] * 2 + ["b_desc_c"] * 2 + ["c_sparse"] * 2
    store.commit(unit)
    assert_indexes_match_rebuild(coll)


def test_an_insert_computes_each_index_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unique check's keys are the ones stored: no index's keys are computed twice."""
    store, coll = _store()
    computed = _count_key_computations(monkeypatch)
    unit = WriteUnit()
    store.insert(unit, coll, {"_id": 1, "a": 1, "b": 1, "u": "x"})
    store.commit(unit)
    assert sorted(computed) == sorted(coll.indexes)
    assert_indexes_match_rebuild(coll)


def test_a_plan_is_reused_only_for_its_own_write() -> None:
    """:meth:`Collection.put` reuses the keys the uniqueness check computed only when they are
    for the same document and previous document."""
    _, coll = _store()
    checked = {"_id": 1, "a": 1, "b": 1, "c": 1}
    plan = coll.check_unique(checked, id_key(1), replacing=False)
    coll.put({"_id": 1, "a": 2, "b": 2, "c": 2}, None, plan)
    assert_indexes_match_rebuild(coll)
    stored = coll.docs[id_key(1)]
    plan = coll.check_unique({**stored, "a": 3}, id_key(1), replacing=True, previous=stored)
    coll.put({**stored, "a": 4}, stored, plan)
    assert_indexes_match_rebuild(coll)


def test_a_document_with_too_many_index_keys_changes_nothing() -> None:
    """Keys are computed for every index before anything is stored: a document with too many
    keys for a later (non-unique) index is refused whole, on insert and on update."""
    store, coll = _store()
    unit = WriteUnit()
    store.insert(unit, coll, {"_id": 1, "a": -1})
    store.commit(unit)
    wide = {"_id": 2, "tags": list(range(101)), "a": list(range(101))}
    before = _snapshot(coll)
    with pytest.raises(WriteError) as info:
        store.insert(WriteUnit(), coll, wide)
    assert info.value.code == 17280
    assert _snapshot(coll) == before
    with pytest.raises(WriteError):
        store.replace(WriteUnit(), coll, coll.docs[id_key(1)], {**wide, "_id": 1}, True)
    assert _snapshot(coll) == before
    assert_indexes_match_rebuild(coll)


def test_change_entries_are_sized_as_the_change_log_accounts_them() -> None:
    """Write entries carry the size the change log would estimate (overhead plus encoded
    images; the pre-image only where images are enabled)."""
    store = DataStore(64 << 20, None)
    unit = WriteUnit()
    plain = store.ensure_collection(unit, "db", "plain")
    imaged = store.create_collection(unit, "db", "imaged",
                                     {"changeStreamPreAndPostImages": {"enabled": True}})
    store.commit(unit)
    for coll in (plain, imaged):
        unit = WriteUnit()
        first = {"_id": 1, "n": "x" * 50}
        second = {"_id": 1, "n": "y" * 70, "more": [1, 2, 3]}
        store.insert(unit, coll, first)
        store.replace(unit, coll, first, second, False)
        store.replace(unit, coll, second, {"_id": 1}, True)
        store.commit(unit)
    for entry in store.changelog.entries:
        if entry.op not in ("insert", "update", "replace"):
            continue
        images = [image for image in (entry.post_image, entry.pre_image) if image is not None]
        assert entry.size == ENTRY_OVERHEAD_BYTES + sum(
            len(bson.encode(image, codec_options=CODEC)) for image in images)
        assert (entry.pre_image is not None) == (entry.coll == "imaged" and entry.op != "insert")


@pytest.mark.parametrize(("value", "key"), [
    (OID, (OBJECT_ID, OID.binary)), (None, (NULL,)), (True, (BOOLEAN, True)),
    (False, (BOOLEAN, False)), (2.5, (NUMBER, 1, 2.5)), (math.inf, (NUMBER, 1, math.inf)),
    (math.nan, (NUMBER, 0, 0)), (3, (NUMBER, 1, 3)), (bson.Int64(3), (NUMBER, 1, 3)),
])
def test_value_keys_of_common_types(value: Any, key: Key) -> None:
    """The shortcuts for common types give the keys of BSON's comparison order, and an ``_id``
    key is its value key."""
    assert value_key(value) == key
    assert id_key(value) == key
    assert value_key(1) == value_key(1.0) == value_key(bson.Int64(1))


# -- through PyMongo ----------------------------------------------------------------------------

def _create_indexes(coll: PyCollection[Doc]) -> None:
    for raw in INDEXES:
        options = {k: v for k, v in raw.items() if k != "key"}
        coll.create_index(list(raw["key"].items()), **options)


def _served(coll: PyCollection[Doc], name: str) -> list[Any]:
    """``_id``s of the documents an index serves (every document it holds an entry for)."""
    return sorted({doc["_id"] for doc in coll.find({}, {"_id": 1}).hint(name)})


def _assert_served_as_rebuilt(coll: PyCollection[Doc], model: dict[int, Doc]) -> None:
    """Each index holds as many keys as a rebuild from the model, the non-sparse ones serve
    exactly the model's documents, and ``validate`` finds the entries equal to a rebuild."""
    keys: dict[str, int] = {"_id_": len(model)}
    for raw in INDEXES:
        index = Index(parse_index_spec(raw), lambda query, doc: engine.matches(query, doc, {}))
        keys[index.spec.name] = sum(len(reference_keys(index, doc)) for doc in model.values())
        if not index.spec.sparse and index.spec.partial_filter is None:
            assert _served(coll, index.spec.name) == sorted(model), index.spec.name
    report = coll.database.command("validate", coll.name, full=True)
    assert report["valid"] is True and report["errors"] == []
    assert report["keysPerIndex"] == keys


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations)
def test_random_writes_through_the_server(db: Database[Doc],
                                          ops: list[tuple[str, int, Doc]]) -> None:
    """The same random writes through PyMongo: each index serves what a rebuild would, and a
    duplicate fails with code 11000 exactly when the model says so."""
    db.drop_collection("items")
    coll = db.items
    _create_indexes(coll)
    model: dict[int, Doc] = {}
    _, mirror = _store()  # the model's collection, for the expected duplicates
    for op, doc_id, values in ops:
        old = model.get(doc_id)
        if op == "delete" or (op != "insert" and old is None):
            coll.delete_one({"_id": doc_id})
            model.pop(doc_id, None)
            continue
        if op == "update":
            assert old is not None
            sets = {k: v for k, v in values.items() if v != _MISSING}
            unsets = {k: "" for k, v in values.items() if v == _MISSING}
            new = {**{k: v for k, v in old.items() if k not in unsets}, **sets}
        else:
            new = _document(doc_id, values)
        mirror.docs = {id_key(i): d for i, d in model.items()}
        duplicate = expected_duplicate(mirror, new, id_key(doc_id), op == "insert")
        try:
            if op == "insert":
                coll.insert_one(dict(new))
            elif op == "replace":
                coll.replace_one({"_id": doc_id}, dict(new))
            else:
                update = {**({"$set": sets} if sets else {}),
                          **({"$unset": unsets} if unsets else {})}
                if update:
                    coll.update_one({"_id": doc_id}, update)
        except DuplicateKeyError as exc:
            assert duplicate is not None, str(exc)
            assert exc.code == 11000 and f"index: {duplicate} dup key:" in str(exc)
            continue
        assert duplicate is None, f"expected a duplicate key on {duplicate}"
        model[doc_id] = new
    _assert_served_as_rebuilt(coll, model)


def _task_lifecycle(coll: PyCollection[Doc], count: int) -> dict[int, Doc]:
    """Insert, claim and finalize tasks as the runtime does; returns the expected documents."""
    coll.create_index([("reactor", 1), ("sourceId", 1)], name="reactgen_task_key", unique=True)
    coll.create_index([("reactor", 1), ("nextRunAt", 1)], name="reactgen_claim")
    coll.create_index([("reactor", 1), ("status", 1)], name="reactgen_status")
    coll.create_index([("expiresAt", 1)], name="reactgen_expiry", expireAfterSeconds=3600)
    coll.insert_many([{"_id": i, "reactor": "noop", "sourceId": i, "status": "pending",
                       "nextRunAt": MOMENT, "attempts": 0} for i in range(count)])
    for i in range(count):
        coll.update_one({"_id": i}, [{"$set": {"status": "processing", "startedAt": "$$NOW",
                                               "nextRunAt": MOMENT + datetime.timedelta(i),
                                               "attempts": {"$add": ["$attempts", 1]}}}])
    for i in range(0, count, 2):
        coll.update_one({"_id": i}, {"$set": {"status": "completed", "nextRunAt": None,
                                              "expiresAt": MOMENT}})
    return {doc["_id"]: doc for doc in coll.find()}


def _assert_task_indexes(coll: PyCollection[Doc], count: int) -> None:
    ids = list(range(count))
    for name in ("reactgen_task_key", "reactgen_claim", "reactgen_status"):
        assert _served(coll, name) == ids, name
    assert _served(coll, "reactgen_expiry") == ids  # not sparse: missing expiresAt is null
    done = coll.find({"reactor": "noop", "status": "completed"}).hint("reactgen_status")
    assert sorted(d["_id"] for d in done) == list(range(0, count, 2))
    due = coll.find({"reactor": "noop", "nextRunAt": {"$gte": MOMENT}}).hint("reactgen_claim")
    assert sorted(d["_id"] for d in due) == list(range(1, count, 2))
    report = coll.database.command("validate", coll.name, full=True)
    assert report["valid"] is True and report["errors"] == []


def test_task_lifecycle_keeps_the_runtime_indexes_right(db: Database[Doc]) -> None:
    """The runtime's writes (insert, claim, finalize) leave its four indexes exact."""
    _task_lifecycle(db.tasks, 40)
    _assert_task_indexes(db.tasks, 40)


def test_duplicate_key_errors_are_unchanged(db: Database[Doc]) -> None:
    """mongod's E11000 error (code, message, keyPattern, keyValue) on insert and on an update
    of the indexed field; an update of other fields of a document never collides with it."""
    coll = db.tasks
    coll.create_index([("reactor", 1), ("sourceId", 1)], name="k", unique=True)
    coll.insert_one({"_id": 1, "reactor": "noop", "sourceId": 5})
    coll.insert_one({"_id": 3, "reactor": "noop", "sourceId": 6})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"_id": 2, "reactor": "noop", "sourceId": 5.0})
    assert info.value.details is not None
    assert info.value.details["errmsg"] == ("E11000 duplicate key error collection: index: k "
                                            "dup key: { reactor: 'noop', sourceId: 5.0 }")
    assert info.value.details["keyPattern"] == {"reactor": 1, "sourceId": 1}
    assert info.value.details["keyValue"] == {"reactor": "noop", "sourceId": 5.0}
    with pytest.raises(DuplicateKeyError) as info:
        coll.update_one({"_id": 3}, {"$set": {"sourceId": 5}})
    assert info.value.details is not None
    assert info.value.details["errmsg"] == ("E11000 duplicate key error collection: index: k "
                                            "dup key: { reactor: 'noop', sourceId: 5 }")
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"_id": 1})
    assert info.value.details is not None
    assert info.value.details["errmsg"] == ("E11000 duplicate key error collection: index: "
                                            "_id_ dup key: { _id: 1 }")
    coll.update_one({"_id": 1}, {"$set": {"sourceId": 5.0, "n": 1}})  # the same key value
    assert _served(coll, "k") == [1, 3]
    assert coll.find_one({"reactor": "noop", "sourceId": 6}, hint="k") == {
        "_id": 3, "reactor": "noop", "sourceId": 6}


def test_indexes_stay_right_inside_transactions(client: MongoClient[Doc],
                                                db: Database[Doc]) -> None:
    """A committed transaction's updates of indexed fields are in the indexes; an aborted
    one's are not, and a duplicate inside a transaction is refused."""
    coll = db.tasks
    _task_lifecycle(coll, 10)
    with client.start_session() as session:
        session.start_transaction()
        coll.update_one({"_id": 1}, {"$set": {"status": "completed", "nextRunAt": None}},
                        session=session)
        session.abort_transaction()
        session.start_transaction()
        coll.update_one({"_id": 1}, {"$set": {"status": "failed"}}, session=session)
        with pytest.raises(DuplicateKeyError):
            coll.update_one({"_id": 3}, {"$set": {"sourceId": 2}}, session=session)
    with client.start_session() as session, session.start_transaction():
        coll.update_one({"_id": 1}, {"$set": {"status": "failed", "nextRunAt": None}},
                        session=session)
        coll.insert_one({"_id": 10, "reactor": "noop", "sourceId": 10,
                         "status": "pending", "nextRunAt": MOMENT}, session=session)
    failed = coll.find({"reactor": "noop", "status": "failed"}).hint("reactgen_status")
    assert [d["_id"] for d in failed] == [1]
    assert _served(coll, "reactgen_claim") == list(range(11))
    report = db.command("validate", coll.name, full=True)
    assert report["valid"] is True and report["errors"] == []


def test_indexes_survive_a_restart(fresh_server: ServerFactory) -> None:
    """With ``--dbpath``, the maintained indexes are what the restarted server serves, and the
    unique one is still enforced."""
    server = fresh_server()
    client: MongoClient[Doc] = MongoClient(server.uri)
    try:
        _task_lifecycle(client.db.tasks, 20)
    finally:
        client.close()
    server.stop()
    server.start()
    client = MongoClient(server.uri)
    try:
        _assert_task_indexes(client.db.tasks, 20)
        with pytest.raises(DuplicateKeyError):
            client.db.tasks.insert_one({"reactor": "noop", "sourceId": 3})
    finally:
        client.close()
