"""Start-up is never blocked by one bad record (issue 10 item 1).

A snapshot or write-ahead-log record that cannot be loaded (a name mongod refuses with
InvalidNamespace 73, undecodable BSON, an index that cannot be built) is set aside into
``<dbpath>/quarantine/`` with one WARNING, and every other collection is served. The data
folders are crafted with the server's own persistence functions.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.timestamp import Timestamp
from pymongo import MongoClient
from support import ServerFactory

from runtime.embedded.persistence import Persistence
from runtime.embedded.wire import CODEC

pytestmark = pytest.mark.embedded_only

#: A frame with a correct checksum around bytes that are not BSON (an unknown element type).
UNDECODABLE = b"\x08\x00\x00\x00\x99a\x00\x00"


def _frame(body: bytes) -> bytes:
    return struct.pack("<iI", len(body), zlib.crc32(body)) + body


def _encoded(record: dict[str, Any]) -> bytes:
    return _frame(bson.encode(record, codec_options=CODEC))


def _rewrite_snapshot(dbpath: Path, extra: list[dict[str, Any]]) -> None:
    persistence = Persistence(dbpath, fsync=False)
    try:
        records = list(persistence.snapshot_records())
        persistence.write_snapshot(records + extra)
    finally:
        persistence.close()


def _last_segment(dbpath: Path) -> Path:
    return sorted(dbpath.glob("wal.*.log"))[-1]


def _quarantined(dbpath: Path) -> list[Path]:
    folder = dbpath / "quarantine"
    return sorted(folder.iterdir()) if folder.exists() else []


def _seeded(fresh_server: ServerFactory) -> Any:
    server = fresh_server()
    with MongoClient(server.uri) as client:
        client.app.good.insert_many([{"_id": i} for i in range(5)])
        client.app.good.create_index("x")
        client.other.kept.insert_one({"_id": "k"})
    return server


def _assert_everything_else_served(server: Any) -> None:
    with MongoClient(server.uri) as client:
        assert client.app.good.count_documents({"_id": {"$ne": "after"}}) == 5
        assert "x_1" in client.app.good.index_information()
        assert client.other.kept.find_one() == {"_id": "k"}
        client.app.good.replace_one({"_id": "after"}, {}, upsert=True)  # it takes writes


def test_snapshot_collection_with_invalid_name_73_is_set_aside(
        fresh_server: ServerFactory) -> None:
    server = _seeded(fresh_server)
    assert server.stop() == 0
    bad = {"kind": "collection", "db": "fz", "coll": "", "options": {}, "uuid": None,
           "indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]}
    _rewrite_snapshot(server.dbpath, [bad, {"kind": "docs", "db": "fz", "coll": "",
                                            "docs": [{"_id": "lost?"}]}])
    server.restart()
    _assert_everything_else_served(server)
    text = server.log_path.read_text()
    assert "set aside snapshot collection record 'fz'.''" in text
    assert "Invalid collection name" in text
    files = _quarantined(server.dbpath)
    assert len(files) == 2  # the collection record and its documents, nothing lost
    assert any(bson.decode(f.read_bytes()).get("docs") == [{"_id": "lost?"}] for f in files)
    # The new snapshot no longer holds them: the next start sets nothing aside.
    assert server.stop() == 0
    server.restart()
    _assert_everything_else_served(server)
    assert len(_quarantined(server.dbpath)) == 2


def test_undecodable_snapshot_record_is_set_aside(fresh_server: ServerFactory) -> None:
    server = _seeded(fresh_server)
    assert server.stop() == 0
    snapshot = server.dbpath / "snapshot.bson"
    data = snapshot.read_bytes()
    first = struct.unpack_from("<i", data)[0] + 8  # after the meta record
    snapshot.write_bytes(data[:first] + _frame(UNDECODABLE) + data[first:])
    server.restart()
    _assert_everything_else_served(server)
    assert "set aside snapshot.bson bytes" in server.log_path.read_text()
    [saved] = _quarantined(server.dbpath)
    assert saved.read_bytes() == _frame(UNDECODABLE)


def test_undecodable_log_record_is_set_aside_and_later_records_replayed(
        fresh_server: ServerFactory) -> None:
    server = _seeded(fresh_server)
    server.kill()
    segment = _last_segment(server.dbpath)
    later = {"ts": Timestamp(2**31, 1), "events": [],
             "ops": [{"op": "put", "db": "app", "coll": "good", "doc": {"_id": "later"}}]}
    with segment.open("ab") as wal:
        wal.write(_frame(UNDECODABLE) + _encoded(later))
    server.restart()
    with MongoClient(server.uri) as client:
        assert client.app.good.find_one({"_id": "later"}) == {"_id": "later"}
        client.app.good.delete_one({"_id": "later"})
    _assert_everything_else_served(server)
    assert f"set aside {segment.name} bytes" in server.log_path.read_text()
    assert len(_quarantined(server.dbpath)) == 1
    server.kill()
    server.restart()
    _assert_everything_else_served(server)
    assert len(_quarantined(server.dbpath)) == 1


def test_logged_rename_to_invalid_name_73_is_set_aside(fresh_server: ServerFactory) -> None:
    # What an older server logged for ``renameCollection`` to "fz.", plus writes to ``""``.
    server = _seeded(fresh_server)
    server.kill()
    ops = [{"op": "rename", "db": "app", "coll": "good", "toDb": "fz", "toColl": ""},
           {"op": "put", "db": "fz", "coll": "", "doc": {"_id": 1}},
           {"op": "create", "db": "a/b", "coll": "c", "options": {}}]
    with _last_segment(server.dbpath).open("ab") as wal:
        wal.write(_encoded({"ts": Timestamp(2**31, 1), "ops": ops, "events": []}))
    server.restart()
    _assert_everything_else_served(server)  # app.good keeps its name and documents
    text = server.log_path.read_text()
    assert text.count("set aside log operation") == 3
    assert len(_quarantined(server.dbpath)) == 3
    with MongoClient(server.uri) as client:
        assert "fz" not in client.list_database_names()


def test_index_that_cannot_be_loaded_is_set_aside_collection_served(
        fresh_server: ServerFactory) -> None:
    server = _seeded(fresh_server)
    assert server.stop() == 0
    persistence = Persistence(server.dbpath, fsync=False)
    try:
        records = list(persistence.snapshot_records())
        for record in records:
            if record.get("kind") == "collection" and record["coll"] == "good":
                record["indexes"].append({"v": 2, "key": {}, "name": "broken"})
        persistence.write_snapshot(records)
    finally:
        persistence.close()
    server.restart()
    _assert_everything_else_served(server)
    with MongoClient(server.uri) as client:
        assert "broken" not in client.app.good.index_information()
    assert "set aside index of app.good in the snapshot" in server.log_path.read_text()
