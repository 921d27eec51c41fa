"""Compiled change-stream pipelines, run on the database (embedded server or MONGODB_URI).

Each test opens ``watch(pipeline)`` with a pipeline exactly as ``reactgen build`` wrote it to
``pipelines/*.json``, performs writes, then inserts a sentinel document (inserts always pass)
and reads events with ``try_next`` until the sentinel arrives: everything before it is what the
pipeline let through. No sleeps.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from generator_support import CORPUS, write_files
from pymongo.collection import Collection
from pymongo.database import Database

from generator.build import build

Doc = dict[str, Any]
_sentinels = iter(range(1_000_000))


def pipeline_file(out: Path, name: str) -> list[Doc]:
    payload = json.loads((out / "pipelines" / f"{name}.json").read_text())
    pipeline: list[Doc] = payload["pipeline"]
    return pipeline


@pytest.fixture
def built(tmp_path: Path, model_cache: Path) -> Callable[..., Path]:
    """Build a corpus case (or the given definition files) and return the package folder."""

    def make(case: str | None = None, files: dict[str, str] | None = None) -> Path:
        schemas = tmp_path / "schemas"
        if case is not None:
            shutil.copytree(CORPUS / case, schemas)
        write_files(schemas, files or {})
        build(schemas, tmp_path / "app", tmp_path, model_cache)
        return tmp_path / "app"

    return make


class Stream:
    """A change stream plus the sentinel protocol."""

    def __init__(self, stream: Any, sentinel_target: Collection[Doc]) -> None:
        self.stream = stream
        self.sentinel_target = sentinel_target

    def events(self, timeout: float = 20) -> list[Doc]:
        """Events up to (not including) a freshly written sentinel insert."""
        sentinel = f"sentinel-{next(_sentinels)}"
        self.sentinel_target.insert_one({"_id": sentinel})
        seen: list[Doc] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.stream.try_next()
            if event is None:
                continue
            if event.get("operationType") == "insert" and event["documentKey"]["_id"] == sentinel:
                return seen
            seen.append(event)
        raise AssertionError(f"sentinel {sentinel} not seen within {timeout}s; got {seen}")

    def changed(self, timeout: float = 20) -> list[tuple[str, Any]]:
        """``(operationType, documentKey._id)`` of :meth:`events`."""
        return [(e["operationType"], e.get("documentKey", {}).get("_id"))
                for e in self.events(timeout)]


@pytest.fixture
def watch(db: Database[Doc]) -> Iterator[Callable[..., Stream]]:
    streams: list[Any] = []

    def open_stream(pipeline: list[Doc], collection: str | None,
                    sentinel_collection: str) -> Stream:
        target = db if collection is None else db[collection]
        stream = target.watch(pipeline, max_await_time_ms=50)
        streams.append(stream)
        return Stream(stream, db[sentinel_collection])

    yield open_stream
    for stream in streams:
        stream.close()


ORDER = {"_id": "o1", "status": "paid", "total": 10.0, "note": "",
         "items": [{"sku": "a", "quantity": 1, "price": 2.0},
                   {"sku": "b", "quantity": 2, "price": 3.0}]}


def test_sync_paid_orders_passes_updates_of_watched_and_filtered_paths_only(
        built: Callable[..., Path], db: Database[Doc], watch: Callable[..., Stream]) -> None:
    out = built("shop")
    orders = db["orders"]
    orders.insert_one(dict(ORDER))
    stream = watch(pipeline_file(out, "sync_paid_orders"), "orders", "orders")
    assert stream.changed() == []

    orders.update_one({"_id": "o1"}, {"$set": {"note": "gift"}})
    orders.update_one({"_id": "o1"}, {"$set": {"items.0.price": 9.5}})
    orders.update_one({"_id": "o1"}, {"$set": {"currency": "EUR"}})
    assert stream.changed() == [], "updates of unwatched fields must not pass"

    orders.update_one({"_id": "o1"}, {"$set": {"total": 12.5}})
    assert stream.changed() == [("update", "o1")], "watched field"
    orders.update_one({"_id": "o1"}, {"$set": {"status": "shipped"}})
    assert stream.changed() == [("update", "o1")], "filtered (and watched) field"
    orders.update_one({"_id": "o1"}, {"$unset": {"total": ""}})
    assert stream.changed() == [("update", "o1")], "removed watched field"


def test_array_paths_ancestors_and_indexes(built: Callable[..., Path], db: Database[Doc],
                                           watch: Callable[..., Stream]) -> None:
    out = built("shop")
    orders = db["orders"]
    orders.insert_one(dict(ORDER))
    stream = watch(pipeline_file(out, "sync_paid_orders"), "orders", "orders")
    stream.changed()

    orders.update_one({"_id": "o1"}, {"$set": {"items.1.sku": "c"}})
    assert stream.changed() == [("update", "o1")], "items.1.sku is the watched items.sku"
    orders.update_one({"_id": "o1"}, {"$set": {"items.0.quantity": 5}})
    assert stream.changed() == [("update", "o1")], "items.0.quantity is items.quantity"
    orders.update_one({"_id": "o1"}, {"$set": {"items.1.price": 4.0}})
    assert stream.changed() == [], "items.N.price is not watched"
    orders.update_one({"_id": "o1"}, {"$set": {"items.0": {"sku": "z", "quantity": 1}}})
    assert stream.changed() == [("update", "o1")], "replacing an element (ancestor path)"
    orders.update_one({"_id": "o1"}, {"$set": {"items": []}})
    assert stream.changed() == [("update", "o1")], "setting the whole array (ancestor)"
    orders.update_one({"_id": "o1"}, {"$push": {"items": {"sku": "n", "quantity": 1}}})
    assert stream.changed() == [("update", "o1")], "appending an element"


@pytest.mark.parametrize(("update", "passes"), [
    ({"$set": {"profile": {"name": "x"}}}, True),         # ancestor of profile.address.city
    ({"$set": {"profile.address": {"city": "B"}}}, True),  # ancestor
    ({"$set": {"profile.address.city": "B"}}, True),      # the path itself
    ({"$set": {"profile.address.city.district": "M"}}, True),  # descendant
    ({"$set": {"profile.address.zip": "1"}}, False),      # sibling
    ({"$set": {"profile.name": "y"}}, False),             # sibling of an ancestor
    ({"$set": {"profile.addressBook": 1}}, False),        # prefix, not a path boundary
    ({"$set": {"tags.2": "t"}}, True),                    # index into a watched array
    ({"$set": {"a+b": 1}}, True),                         # regex metacharacters are literal
    ({"$set": {"aab": 1}}, False),
    ({"$set": {"a+b.c": 1}}, True),
    ({"$set": {"aab.c": 1}}, False),
    ({"$set": {"first-name": "Q"}}, True),
    ({"$set": {"first": "Q"}}, False),
    ({"$set": {"visits": 1}}, True),                      # read by the computed watched value
    ({"$set": {"flag": True}}, True),                     # read by the filter
    ({"$set": {"other": True}}, False),
])
def test_nested_paths_descendants_and_special_characters(
        built: Callable[..., Path], db: Database[Doc], watch: Callable[..., Stream],
        update: Doc, passes: bool) -> None:
    out = built(files={"people.reactor.yaml": (
        "collection: people\nschema: {type: object}\n"
        "trigger:\n"
        "  filter: {$or: [{flag: {$exists: true}}, {flag: {$exists: false}}]}\n"
        "  watch:\n"
        "    profile.address.city: 1\n"
        "    tags: 1\n"
        "    a+b: 1\n"
        "    first-name: 1\n"
        "    often: {$gt: ['$visits', 10]}\n")})
    people = db["people"]
    people.insert_one({"_id": "p1", "profile": {"address": {"city": {"n": "A"}, "zip": "0"},
                                                "name": "n"},
                       "tags": ["x", "y", "z"], "a+b": {}, "aab": {}, "first-name": "F",
                       "first": "F", "visits": 0, "flag": False, "other": False})
    stream = watch(pipeline_file(out, "people"), "people", "people")
    stream.changed()
    people.update_one({"_id": "p1"}, update)
    assert stream.changed() == ([("update", "p1")] if passes else [])


def test_inserts_replaces_and_deletes_always_pass(built: Callable[..., Path],
                                                  db: Database[Doc],
                                                  watch: Callable[..., Stream]) -> None:
    out = built("shop")
    users = db["users"]
    stream = watch(pipeline_file(out, "send_welcome_message"), "users", "users")
    users.insert_one({"_id": "u1", "email": "a@example.com"})
    users.update_one({"_id": "u1"}, {"$set": {"email": "b@example.com", "name": "B"}})
    users.replace_one({"_id": "u1"}, {"email": "c@example.com"})
    users.delete_one({"_id": "u1"})
    assert stream.changed() == [("insert", "u1"), ("replace", "u1"), ("delete", "u1")], (
        "watch: [] without a filter: no update ever passes, everything else does")


def test_filter_only_paths_pass_with_an_empty_watch(built: Callable[..., Path],
                                                    db: Database[Doc],
                                                    watch: Callable[..., Stream]) -> None:
    out = built("empty_watch")
    users = db["users"]
    users.insert_one({"_id": "u1", "email": "a@example.com", "verified": False})
    stream = watch(pipeline_file(out, "welcome_verified"), "users", "users")
    users.update_one({"_id": "u1"}, {"$set": {"email": "b@example.com"}})
    assert stream.changed() == []
    users.update_one({"_id": "u1"}, {"$set": {"verified": True}})
    assert stream.changed() == [("update", "u1")]


def test_expression_filter_paths_pass(built: Callable[..., Path], db: Database[Doc],
                                      watch: Callable[..., Stream]) -> None:
    out = built("expression_filter")
    orders = db["orders"]
    orders.insert_one({"_id": "o1", "total": 50, "status": "new", "note": ""})
    stream = watch(pipeline_file(out, "big_orders"), "orders", "orders")
    orders.update_one({"_id": "o1"}, {"$set": {"note": "x"}})
    assert stream.changed() == []
    orders.update_one({"_id": "o1"}, {"$set": {"total": 150}})
    assert stream.changed() == [("update", "o1")], "the expression filter reads $total"
    orders.update_one({"_id": "o1"}, {"$set": {"status": "paid"}})
    assert stream.changed() == [("update", "o1")], "watched"


def test_no_watch_passes_every_update(built: Callable[..., Path], db: Database[Doc],
                                      watch: Callable[..., Stream]) -> None:
    out = built("no_watch")
    customers = db["customers"]
    customers.insert_one({"_id": "c1", "name": "A"})
    stream = watch(pipeline_file(out, "mirror"), "customers", "customers")
    customers.update_one({"_id": "c1"}, {"$set": {"anything": 1}})
    assert stream.changed() == [("update", "c1")]


def test_per_database_pipeline(built: Callable[..., Path], db: Database[Doc],
                               watch: Callable[..., Stream]) -> None:
    out = built("shop")
    db["orders"].insert_one(dict(ORDER))
    db["reviews"].insert_one({"_id": "r1", "productId": "p", "rating": 3, "text": "",
                              "hidden": False})
    db["users"].insert_one({"_id": "u1", "email": "a@example.com"})
    db["unrelated"].insert_one({"_id": "x1"})
    stream = watch(pipeline_file(out, "database_default"), None, "orders")

    db["unrelated"].insert_one({"_id": "x2"})
    db["unrelated"].update_one({"_id": "x1"}, {"$set": {"status": "paid"}})
    db["orders"].update_one({"_id": "o1"}, {"$set": {"note": "n"}})
    db["reviews"].update_one({"_id": "r1"}, {"$set": {"text": "t"}})
    db["users"].update_one({"_id": "u1"}, {"$set": {"email": "b@example.com"}})
    assert stream.changed() == [], "other collections and unwatched fields never pass"

    db["orders"].update_one({"_id": "o1"}, {"$set": {"items.1.quantity": 7}})
    db["reviews"].update_one({"_id": "r1"}, {"$set": {"hidden": True}})
    db["reviews"].update_one({"_id": "r1"}, {"$set": {"rating": 4}})
    db["users"].insert_one({"_id": "u2", "email": "c@example.com"})
    db["users"].delete_one({"_id": "u1"})
    assert stream.changed() == [("update", "o1"), ("update", "r1"), ("update", "r1"),
                                ("insert", "u2"), ("delete", "u1")]

    db["reviews"].drop()
    db["unrelated"].drop()
    events = stream.events()
    assert [(e["operationType"], e["ns"]["coll"]) for e in events] == [("drop", "reviews")]


def test_shared_collection_pipeline_is_the_union(built: Callable[..., Path],
                                                 db: Database[Doc],
                                                 watch: Callable[..., Stream]) -> None:
    out = built("shared_collection")
    customers = db["customers"]
    customers.insert_one({"_id": "c1", "email": "a", "tier": "free",
                          "address": {"country": "DE", "city": "B"}, "name": "n"})
    stream = watch(pipeline_file(out, "database_default"), None, "customers")
    customers.update_one({"_id": "c1"}, {"$set": {"name": "m", "address.city": "M"}})
    assert stream.changed() == []
    for change in ({"email": "b"}, {"tier": "pro"}, {"address.country": "FR"}):
        customers.update_one({"_id": "c1"}, {"$set": change})
    assert stream.changed() == [("update", "c1")] * 3
    only_tier = watch(pipeline_file(out, "upgrade_mail"), "customers", "customers")
    customers.update_one({"_id": "c1"}, {"$set": {"email": "c"}})
    customers.update_one({"_id": "c1"}, {"$set": {"tier": "free"}})
    assert only_tier.changed() == [("update", "c1")]
