"""Durability of the embedded server with ``--dbpath``, tested against the real server process.

Every acknowledged write must survive SIGKILL: documents, indexes (unique ones still enforced),
collections created and dropped, committed transactions, and the change-stream history (a
stream resumes after a restart from a token issued before the kill and gets exactly the events
after that token). The write-ahead log's torn tail is cut off, a clean SIGTERM exits 0, and a
data directory is never shared by two servers.

All of these kill or restart the server, or look at its files, so they are ``embedded_only``.
"""

from __future__ import annotations

import datetime
import os
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError
from support import ServerFactory, wait_until

from runtime.embedded.process import EmbeddedServer, EmbeddedServerError

pytestmark = pytest.mark.embedded_only

Doc = dict[str, Any]
Client = MongoClient[Doc]


def _client(server: EmbeddedServer) -> Client:
    # Short timeouts: a server that is down must fail a test quickly, not hang it.
    return MongoClient(server.uri, serverSelectionTimeoutMS=10_000, connectTimeoutMS=5_000)


@pytest.fixture
def connect() -> Iterator[Any]:
    """``connect(server)``: a client for the server, closed after the test."""
    clients: list[Client] = []

    def make(server: EmbeddedServer) -> Client:
        client = _client(server)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _segments(dbpath: Path) -> list[Path]:
    return sorted(dbpath.glob("wal.*.log"))


def _events_after(coll: Collection[Doc], token: Any, count: int) -> list[Doc]:
    """The next ``count`` events of a stream resumed after ``token``; then nothing more."""
    events: list[Doc] = []
    with coll.watch(resume_after=token, max_await_time_ms=200) as stream:

        def collected() -> bool:
            event = stream.try_next()
            if event is not None:
                events.append(event)
            return len(events) >= count

        wait_until(collected, timeout=30, interval=0,
                   message=f"{count} events after the resume token")
        assert stream.try_next() is None, "more events than written after the token"
    return events


def _summary(events: list[Doc]) -> list[tuple[str, Any]]:
    return [(e["operationType"], e.get("documentKey", {}).get("_id")) for e in events]


# -- every kind of acknowledged write survives SIGKILL ----------------------------------------


def test_acknowledged_writes_survive_sigkill(fresh_server: ServerFactory, connect: Any) -> None:
    server = fresh_server()
    client = connect(server)
    db = client.shop
    when = datetime.datetime(2024, 5, 1, 12, 30, 15, 123000)
    db.orders.insert_many([{"_id": i, "sku": f"s{i}", "qty": i, "at": when} for i in range(10)])
    db.orders.create_index([("sku", ASCENDING)], unique=True, name="sku_unique")
    db.orders.create_index([("qty", -1), ("at", 1)], name="qty_at")
    db.orders.update_one({"_id": 1}, {"$set": {"qty": 100}, "$push": {"tags": "x"}})
    db.orders.update_many({"qty": {"$lt": 5}}, {"$inc": {"qty": 1000}})
    db.orders.replace_one({"_id": 2}, {"sku": "s2", "replaced": True})
    db.orders.delete_one({"_id": 3})
    db.orders.delete_many({"_id": {"$in": [4, 5]}})
    db.orders.find_one_and_update({"_id": 6}, {"$set": {"claimed": "w1"}})
    db.create_collection("capped_like", validator={"$jsonSchema": {"bsonType": "object"}})
    db.doomed.insert_one({"_id": "bye"})
    db.doomed.drop()
    client.gone.things.insert_one({"x": 1})
    client.drop_database("gone")
    db.renamed_src.insert_one({"_id": "r"})
    db.renamed_src.rename("renamed_dst")
    db.scratch.insert_one({"_id": 1})
    db.scratch.create_index("tmp", name="tmp_1")
    db.scratch.drop_index("tmp_1")
    with client.start_session() as session, session.start_transaction():
        db.orders.insert_one({"_id": 20, "sku": "s20", "qty": 1}, session=session)
        db.orders.update_one({"_id": 0}, {"$set": {"txn": True}}, session=session)
        db.ledger.insert_one({"_id": "t1", "amount": 5}, session=session)
    with client.start_session() as session:
        session.start_transaction()
        db.orders.insert_one({"_id": 21, "sku": "s21"}, session=session)
        session.abort_transaction()

    expected_orders = list(db.orders.find(sort=[("_id", 1)]))
    expected_indexes = sorted(
        (i["name"], dict(i["key"]), bool(i.get("unique"))) for i in db.orders.list_indexes())
    expected_collections = sorted(db.list_collection_names())

    assert server.kill() == -9
    server.restart()
    client = connect(server)
    db = client.shop

    assert list(db.orders.find(sort=[("_id", 1)])) == expected_orders
    assert db.orders.find_one({"_id": 20}) == {"_id": 20, "sku": "s20", "qty": 1}
    assert db.orders.find_one({"_id": 21}) is None  # aborted: never acknowledged as written
    assert db.orders.find_one({"_id": 0})["txn"] is True
    assert db.ledger.find_one() == {"_id": "t1", "amount": 5}
    assert db.orders.find_one({"_id": 1}) == {"_id": 1, "sku": "s1", "qty": 100, "at": when,
                                              "tags": ["x"]}
    assert sorted(db.list_collection_names()) == expected_collections
    assert "doomed" not in expected_collections and "renamed_src" not in expected_collections
    assert db.renamed_dst.find_one() == {"_id": "r"}
    assert "gone" not in client.list_database_names()
    options = db["capped_like"].options()
    assert options["validator"] == {"$jsonSchema": {"bsonType": "object"}}
    assert sorted((i["name"], dict(i["key"]), bool(i.get("unique")))
                  for i in db.orders.list_indexes()) == expected_indexes
    assert [i["name"] for i in db.scratch.list_indexes()] == ["_id_"]

    # The unique index is enforced after recovery, and the index is used for lookups.
    with pytest.raises(DuplicateKeyError):
        db.orders.insert_one({"sku": "s7"})
    with pytest.raises(DuplicateKeyError):
        db.orders.insert_one({"_id": 7})
    assert db.orders.find_one({"sku": "s8"})["_id"] == 8
    # New writes after recovery work and are durable too.
    db.orders.insert_one({"_id": 30, "sku": "s30"})
    server.kill()
    server.restart()
    assert connect(server).shop.orders.find_one({"_id": 30}) == {"_id": 30, "sku": "s30"}


def test_index_built_on_existing_documents_survives_kill(fresh_server: ServerFactory,
                                                         connect: Any) -> None:
    server = fresh_server()
    coll = connect(server).db.people
    coll.insert_many([{"_id": i, "email": f"p{i}@x", "tags": [i, i + 1]} for i in range(500)])
    coll.create_index("email", unique=True)
    coll.create_index("tags")  # multikey
    server.kill()
    server.restart()
    coll = connect(server).db.people
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"email": "p42@x"})
    assert [d["_id"] for d in coll.find({"tags": 43}, sort=[("_id", 1)])] == [42, 43]
    assert coll.count_documents({}) == 500


# -- change streams resume across a kill ------------------------------------------------------


def test_change_stream_resumes_from_token_issued_before_kill(fresh_server: ServerFactory,
                                                             connect: Any) -> None:
    server = fresh_server()
    client = connect(server)
    coll = client.app.events
    with coll.watch(max_await_time_ms=200) as stream:
        coll.insert_one({"_id": 1})
        coll.insert_one({"_id": 2})
        first = wait_until(stream.try_next, message="first event")
        assert first["documentKey"] == {"_id": 1}
        token = first["_id"]
    coll.update_one({"_id": 1}, {"$set": {"v": 1}})
    coll.delete_one({"_id": 2})
    with client.start_session() as session, session.start_transaction():
        coll.insert_one({"_id": 3}, session=session)
        coll.insert_one({"_id": 4}, session=session)

    server.kill()
    server.restart()
    coll = connect(server).app.events
    events = _events_after(coll, token, 5)
    assert _summary(events) == [("insert", 2), ("update", 1), ("delete", 2), ("insert", 3),
                                ("insert", 4)]
    assert events[1]["updateDescription"]["updatedFields"] == {"v": 1}
    assert events[3]["lsid"] == events[4]["lsid"]
    assert events[3]["txnNumber"] == events[4]["txnNumber"]

    # Events written after the restart follow, and a token from after the restart works too.
    coll.insert_one({"_id": 5})
    events = _events_after(coll, events[-1]["_id"], 1)
    assert _summary(events) == [("insert", 5)]
    assert events[0]["clusterTime"] > first["clusterTime"]


def test_repeated_kill_restart_cycles_keep_everything(fresh_server: ServerFactory,
                                                      connect: Any) -> None:
    server = fresh_server()
    coll = connect(server).app.cycles
    coll.create_index("n", unique=True)
    start_token = coll.watch().resume_token
    expected: list[tuple[str, Any]] = []
    for cycle in range(3):
        coll.insert_many([{"_id": f"{cycle}-{i}", "n": cycle * 10 + i} for i in range(5)])
        expected += [("insert", f"{cycle}-{i}") for i in range(5)]
        coll.update_one({"_id": f"{cycle}-0"}, {"$set": {"cycle": cycle}})
        expected.append(("update", f"{cycle}-0"))
        coll.delete_one({"_id": f"{cycle}-4"})
        expected.append(("delete", f"{cycle}-4"))
        coll.database[f"extra{cycle}"].insert_one({"cycle": cycle})
        assert server.kill() == -9
        server.restart()
        coll = connect(server).app.cycles
        assert coll.count_documents({}) == 4 * (cycle + 1)
    assert sorted(coll.database.list_collection_names()) == ["cycles", "extra0", "extra1",
                                                             "extra2"]
    assert [d["_id"] for d in coll.find({"cycle": {"$exists": True}}, sort=[("_id", 1)])] == [
        "0-0", "1-0", "2-0"]
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"n": 21})
    assert _summary(_events_after(coll, start_token, len(expected))) == expected


# -- the log's torn tail and damaged files ----------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02garbage",  # shorter than a record header
    b"\xff\x00\x00\x00\x12\x34\x56\x78" + b"x" * 40,  # header promising more than is there
    b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"\x20\x00\x00\x00" + b"y" * 28,  # bad checksum
    b"\xff\xff\xff\x7f\x00\x00\x00\x00" + b"z" * 10,  # a 2 GiB length in a torn header
    b"\x00" * 4096,  # zeros: a file extended by the filesystem but never written
], ids=["short", "truncated", "checksum", "huge-length", "zeros"])
def test_torn_tail_record_is_ignored(fresh_server: ServerFactory, connect: Any,
                                     garbage: bytes) -> None:
    server = fresh_server()
    assert server.dbpath is not None
    coll = connect(server).app.torn
    coll.insert_many([{"_id": i} for i in range(20)])
    coll.create_index("x")
    server.kill()
    segments = _segments(server.dbpath)
    assert segments, "the write-ahead log should hold the writes after a kill"
    with segments[-1].open("ab") as wal:
        wal.write(garbage)

    server.restart()
    coll = connect(server).app.torn
    assert coll.count_documents({}) == 20
    assert "x_1" in coll.index_information()
    # Writes after the cut are appended after the last good record, so they survive too.
    coll.insert_one({"_id": "after"})
    server.kill()
    server.restart()
    coll = connect(server).app.torn
    assert coll.count_documents({}) == 21
    assert coll.find_one({"_id": "after"}) == {"_id": "after"}
    assert "ignoring torn record" in server.log_path.read_text()


def test_damaged_snapshot_record_is_set_aside(fresh_server: ServerFactory,
                                              connect: Any) -> None:
    # Issue 10: one damaged record no longer blocks start-up; it goes to quarantine/.
    server = fresh_server()
    assert server.dbpath is not None
    connect(server).app.c.insert_many([{"_id": i, "pad": "p" * 100} for i in range(100)])
    assert server.stop() == 0
    snapshot = server.dbpath / "snapshot.bson"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    server.restart()
    assert "app" in connect(server).list_database_names()
    assert "set aside snapshot.bson bytes" in server.log_path.read_text()
    assert list((server.dbpath / "quarantine").iterdir())


def test_second_server_on_same_dbpath_is_refused(fresh_server: ServerFactory,
                                                 tmp_path: Path) -> None:
    first = fresh_server()
    assert first.dbpath is not None
    with pytest.raises(EmbeddedServerError, match="in use by another running server"):
        fresh_server(dbpath=first.dbpath)
    first.kill()  # the lock dies with the process
    first.restart()


def test_leftover_log_segment_after_checkpoint_is_not_replayed_twice(
        fresh_server: ServerFactory, connect: Any, tmp_path: Path) -> None:
    # A crash after the snapshot was renamed into place but before the log segments it covers
    # were deleted leaves them behind: their records must not be applied (or published) again.
    server = fresh_server()
    assert server.dbpath is not None
    coll = connect(server).app.twice
    token = coll.watch().resume_token
    coll.insert_one({"_id": 1, "n": 0})
    coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
    coll.database.other.insert_one({"_id": "o"})
    coll.database.other.drop()
    server.kill()
    saved = tmp_path / "saved"
    saved.mkdir()
    for segment in _segments(server.dbpath):
        shutil.copy2(segment, saved / segment.name)
    server.restart()
    assert server.stop() == 0  # the final checkpoint deletes the covered segments
    for segment in saved.iterdir():
        shutil.copy2(segment, server.dbpath / segment.name)

    server.restart()
    coll = connect(server).app.twice
    assert list(coll.find()) == [{"_id": 1, "n": 1}]
    assert "other" not in coll.database.list_collection_names()
    assert _summary(_events_after(coll, token, 2)) == [("insert", 1), ("update", 1)]


# -- background checkpoints -------------------------------------------------------------------


def test_checkpoint_while_writing_loses_nothing(fresh_server: ServerFactory,
                                                connect: Any) -> None:
    # A tiny checkpoint threshold makes the server snapshot (in a worker thread) again and
    # again while the writes go on; a kill at any point must lose nothing.
    server = fresh_server(extra_args=["--checkpoint-mb", "0.05"])
    assert server.dbpath is not None
    coll = connect(server).app.busy
    coll.create_index("k", unique=True)
    token = coll.watch().resume_token
    written = 0

    def write_batch() -> bool:
        nonlocal written
        coll.insert_many([{"_id": written + i, "k": written + i, "pad": "p" * 200}
                          for i in range(50)])
        written += 50
        snapshot = server.dbpath / "snapshot.bson"  # type: ignore[operator]
        return snapshot.exists() and written >= 2000

    wait_until(write_batch, timeout=60, interval=0, message="a background checkpoint")
    wait_until(lambda: "checkpoint written" in server.log_path.read_text(), timeout=30,
               message="the checkpoint finished")
    coll.update_many({}, {"$set": {"touched": True}})
    server.kill()
    server.restart()
    coll = connect(server).app.busy
    assert coll.count_documents({}) == written
    assert coll.count_documents({"touched": True}) == written
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"k": 7})
    events = _events_after(coll, token, written + written)
    assert [e["operationType"] for e in events] == ["insert"] * written + ["update"] * written


# -- a failing disk ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_failed_log_write_leaves_no_torn_record(fresh_server: ServerFactory,
                                                connect: Any) -> None:
    # A log write that fails half-way (here: the file size limit) must not leave a partial
    # record in front of the records that follow, or those would be unreadable at start-up.
    server = fresh_server()
    assert server.dbpath is not None and server.pid is not None
    coll = connect(server).app.disk
    coll.insert_one({"_id": "before"})
    segment = _segments(server.dbpath)[-1]
    limit = segment.stat().st_size + 1000
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
    try:
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (limit, hard))
    except PermissionError:
        pytest.skip("not allowed to change the server's file size limit")
    try:
        with pytest.raises(Exception, match="internal error"):
            coll.insert_one({"_id": "too-big", "pad": "x" * 5000})
        assert segment.stat().st_size < limit
    finally:
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (soft, hard))
    coll.insert_one({"_id": "after"})
    server.kill()
    server.restart()
    coll = connect(server).app.disk
    assert sorted(d["_id"] for d in coll.find()) == ["after", "before"]


# -- clean shutdown ---------------------------------------------------------------------------


def test_sigterm_exits_zero_and_restart_keeps_data(fresh_server: ServerFactory,
                                                   connect: Any) -> None:
    server = fresh_server()
    assert server.dbpath is not None
    coll = connect(server).app.clean
    coll.insert_many([{"_id": i} for i in range(100)])
    coll.create_index("x", expireAfterSeconds=3600)
    token = coll.watch().resume_token
    coll.insert_one({"_id": "last"})
    assert server.stop() == 0
    # The checkpoint left a snapshot and an empty log.
    assert (server.dbpath / "snapshot.bson").exists()
    assert all(segment.stat().st_size == 0 for segment in _segments(server.dbpath))

    server.restart()
    coll = connect(server).app.clean
    assert coll.count_documents({}) == 101
    assert coll.index_information()["x_1"]["expireAfterSeconds"] == 3600
    assert _summary(_events_after(coll, token, 1)) == [("insert", "last")]
    assert server.stop() == 0
    server.restart()
    assert connect(server).app.clean.count_documents({}) == 101


def test_start_up_and_idle_shutdown_write_nothing(fresh_server: ServerFactory,
                                                  connect: Any) -> None:
    # Start-up only reads: a big data set must not be rewritten on every start, and a server
    # that logged nothing since its last checkpoint has nothing to write at shutdown either.
    server = fresh_server()
    assert server.dbpath is not None
    connect(server).app.idle.insert_many([{"_id": i} for i in range(1000)])
    assert server.stop() == 0
    snapshot = server.dbpath / "snapshot.bson"
    before = snapshot.stat()
    server.restart()
    assert connect(server).app.idle.count_documents({}) == 1000  # reads log nothing
    assert server.stop() == 0
    after = snapshot.stat()
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (
        before.st_mtime_ns, before.st_ino, before.st_size)


def test_sigterm_with_open_connections_and_stream(fresh_server: ServerFactory,
                                                  connect: Any) -> None:
    server = fresh_server()
    coll = connect(server).app.open
    coll.insert_one({"_id": 1})
    stream = coll.watch(max_await_time_ms=5000)
    stream.try_next()  # a getMore may be waiting in the server right now
    assert server.stop() == 0
    server.restart()
    assert connect(server).app.open.find_one() == {"_id": 1}


def test_many_small_acknowledged_writes_survive(fresh_server: ServerFactory,
                                                connect: Any) -> None:
    server = fresh_server()
    coll = connect(server).app.small
    for i in range(300):
        coll.insert_one({"_id": i})
        if i % 3 == 0:
            coll.update_one({"_id": i}, {"$set": {"even": i % 2 == 0}})
    server.kill()
    server.restart()
    coll = connect(server).app.small
    assert [d["_id"] for d in coll.find(sort=[("_id", 1)])] == list(range(300))
    assert coll.count_documents({"even": {"$exists": True}}) == 100


def test_fsync_mode_survives_kill(fresh_server: ServerFactory, connect: Any) -> None:
    server = fresh_server(extra_args=["--fsync"])
    coll = connect(server).app.fsync
    coll.insert_many([{"_id": i} for i in range(10)])
    server.kill()
    server.restart()
    assert connect(server).app.fsync.count_documents({}) == 10


def test_data_files_live_in_dbpath_only(fresh_server: ServerFactory, connect: Any) -> None:
    server = fresh_server()
    assert server.dbpath is not None
    connect(server).app.files.insert_one({"_id": 1})
    assert server.stop() == 0
    names = sorted(os.listdir(server.dbpath))
    assert "snapshot.bson" in names and "mongod.lock" in names
    assert not [n for n in names if n.endswith(".tmp")]


# -- recovery internals -----------------------------------------------------------------------


def test_bulk_index_build_matches_incremental_inserts() -> None:
    # Recovery builds indexes in one pass (with shortcuts for plain indexes); the result must
    # be exactly what inserting the documents one by one produces.
    from bson import Decimal128, Int64, ObjectId

    from runtime.embedded.indexes import parse_index_spec
    from runtime.embedded.ordering import id_key, value_key
    from runtime.embedded.recovery import _build_indexes, _fast_value_key
    from runtime.embedded.storage import Collection

    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    aware = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    values: list[Any] = [None, True, False, 0, 1, -7, 2**40, Int64(5), 1.5, float("nan"),
                         float("inf"), Decimal128("2.50"), "", "text", "ü", when, aware,
                         ObjectId("65a000000000000000000001"), b"raw", {"a": 1, "b": [1, 2]},
                         [], [1, "x"], [[1, 2], 3], {"nested": {"x": None}}]
    docs = [{"_id": n, "a": v, "b": values[-1 - n % len(values)], "c": {"d": v}}
            for n, v in enumerate(values * 2)]
    docs += [{"_id": "no-fields"}, {"_id": ObjectId("65a000000000000000000009"), "a": 3}]
    specs = [
        {"key": {"a": 1}, "name": "a"},
        {"key": {"a": -1}, "name": "a_desc"},
        {"key": {"a": 1, "b": -1}, "name": "a_b"},
        {"key": {"b": 1, "a": 1}, "name": "b_a"},
        {"key": {"c.d": 1}, "name": "cd"},
        {"key": {"a": 1}, "name": "a_sparse", "sparse": True},
        {"key": {"a": 1}, "name": "a_partial", "partialFilterExpression": {"b": {"$gt": 0}}},
        {"key": {"a": "hashed"}, "name": "a_hashed"},
    ]
    incremental = Collection("db", "inc")
    bulk = Collection("db", "bulk")
    for spec in specs:
        incremental.add_index(parse_index_spec(spec))
        bulk.add_index(parse_index_spec(spec))
    for doc in docs:
        incremental.put(doc, None)
        bulk.docs[id_key(doc["_id"])] = doc
    _build_indexes(bulk)
    for value in values:
        assert _fast_value_key(value) == value_key(value) == id_key(value), value
    for name, index in incremental.indexes.items():
        built = bulk.indexes[name]
        assert list(built.entries) == list(index.entries), name
        assert built.multikey == index.multikey, name
