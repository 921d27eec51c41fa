"""TTL options are checked as mongod 7.0 checks them, and maintenance steps are isolated.

Issue 10 item 6: a TTL index with ``expireAfterSeconds`` NaN or Int64 max made the maintenance
step raise every second, which stopped TTL, session expiry and checkpoints for the whole
server. mongod refuses such values: ``createIndexes`` with CannotCreateIndex (67), ``collMod``
with InvalidOptions (72) or TypeMismatch (14); an index stored with one is skipped by the TTL
monitor ("Skipping TTL job due to invalid index spec").
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson.int64 import Int64
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure
from support import ServerFactory, wait_until

from runtime.embedded.persistence import Persistence

Db = Database[dict[str, Any]]
INT64_MAX = Int64(2**63 - 1)


def _code(db: Db, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(OperationFailure) as info:
        db.command(*args, **kwargs)
    return int(info.value.code or 0)


@pytest.mark.parametrize("value", [float("nan"), INT64_MAX, 2**31, -1, "x", float("inf")],
                         ids=["nan", "int64-max", "int32-max-plus-1", "negative", "string",
                              "infinity"])
def test_create_indexes_refuses_invalid_ttl_with_cannot_create_index_67(db: Db,
                                                                          value: Any) -> None:
    spec = {"key": {"at": 1}, "name": "at_1", "expireAfterSeconds": value}
    assert _code(db, "createIndexes", "c", indexes=[spec]) == 67
    assert "at_1" not in db.c.index_information()


def test_ttl_on_compound_index_is_67_and_on_id_is_197(db: Db) -> None:
    compound = {"key": {"a": 1, "b": 1}, "name": "ab", "expireAfterSeconds": 10}
    assert _code(db, "createIndexes", "c", indexes=[compound]) == 67
    on_id = {"key": {"_id": 1}, "name": "_id_", "expireAfterSeconds": 10}
    assert _code(db, "createIndexes", "c", indexes=[on_id]) == 197


def test_largest_valid_ttl_is_accepted(db: Db) -> None:
    db.c.create_index("at", expireAfterSeconds=2**31 - 1)
    assert db.c.index_information()["at_1"]["expireAfterSeconds"] == 2**31 - 1


def test_coll_mod_refuses_invalid_ttl_invalid_options_72_type_mismatch_14(db: Db) -> None:
    db.c.create_index("at", expireAfterSeconds=60)
    db.c.create_index([("a", 1), ("b", 1)])
    for value in (float("nan"), INT64_MAX, -1):
        assert _code(db, "collMod", "c", index={"name": "at_1",
                                                "expireAfterSeconds": value}) == 72
    assert _code(db, "collMod", "c", index={"name": "at_1", "expireAfterSeconds": "x"}) == 14
    assert _code(db, "collMod", "c", index={"keyPattern": {"_id": 1},
                                            "expireAfterSeconds": 5}) == 72
    assert _code(db, "collMod", "c", index={"keyPattern": {"a": 1, "b": 1},
                                            "expireAfterSeconds": 5}) == 72
    assert db.c.index_information()["at_1"]["expireAfterSeconds"] == 60


def _poison_ttl(dbpath: Any, values: dict[str, Any]) -> None:
    """Give stored TTL indexes invalid values, as data written by an older version could."""
    persistence = Persistence(dbpath, fsync=False)
    try:
        records = list(persistence.snapshot_records())
        for record in records:
            if record.get("kind") == "collection" and record["coll"] in values:
                for spec in record["indexes"]:
                    if spec["name"] == "at_1":
                        spec["expireAfterSeconds"] = values[record["coll"]]
        persistence.write_snapshot(records)
    finally:
        persistence.close()


@pytest.mark.embedded_only
def test_invalid_stored_ttl_does_not_stop_other_maintenance(fresh_server: ServerFactory) -> None:
    server = fresh_server(extra_args=["--checkpoint-mb", "0.0001"])
    past = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(days=1)
    with MongoClient(server.uri) as client:
        for name in ("a_nan", "b_huge"):  # sorted before "c_good": they are met first
            client.app[name].create_index("at", expireAfterSeconds=0)
            client.app[name].insert_one({"_id": 1, "at": past})
        client.app.c_good.create_index("at", expireAfterSeconds=0)
    assert server.stop() == 0
    _poison_ttl(server.dbpath, {"a_nan": float("nan"), "b_huge": INT64_MAX})
    server.restart()
    snapshot = server.dbpath / "snapshot.bson"
    before = snapshot.stat().st_mtime_ns
    with MongoClient(server.uri) as client:
        client.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=1)
        session = client.start_session()
        session.start_transaction()
        client.app.txn.insert_one({"_id": "t"}, session=session)
        client.app.c_good.insert_one({"_id": "expired", "at": past})
        # TTL deletions on another collection go on.
        wait_until(lambda: client.app.c_good.find_one({"_id": "expired"}) is None,
                   timeout=15, interval=0.1, message="TTL deletion on app.c_good")
        # Session expiry goes on: the transaction is aborted past its lifetime.
        wait_until(lambda: "aborting transaction" in server.log_path.read_text(), timeout=15,
                   interval=0.1, message="transaction aborted by session expiry")
        session.end_session()
        # Checkpoints go on, once the log outgrows the snapshot.
        client.app.pad.insert_one({"pad": "p" * 50_000})
        wait_until(lambda: snapshot.stat().st_mtime_ns != before, timeout=15, interval=0.1,
                   message="a checkpoint written")
        # The invalid indexes delete nothing and are reported once each, not every second.
        assert client.app.a_nan.count_documents({}) == 1
        assert client.app.b_huge.count_documents({}) == 1
    text = server.log_path.read_text()
    assert text.count("TTL monitor skips index 'at_1' of app.a_nan") == 1
    assert text.count("TTL monitor skips index 'at_1' of app.b_huge") == 1
    assert "maintenance step" not in text
