"""The TTL monitor deletes documents whose indexed date is older than ``expireAfterSeconds``.

Deletion is asynchronous: the tests poll with a deadline. The embedded server's monitor runs
every second; a real MongoDB's every 60 seconds, so the deadline is longer against one.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from support import ServerFactory, wait_until

Db = Database[dict[str, Any]]
DEADLINE = 150.0 if os.environ.get("MONGODB_URI") else 15.0


def _now() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _ids(db: Db, name: str) -> list[Any]:
    return sorted(str(d["_id"]) for d in db[name].find({}, {"_id": 1}))


def test_expired_documents_are_deleted(db: Db) -> None:
    now = _now()
    hour = datetime.timedelta(hours=1)
    db.sessions.create_index("at", expireAfterSeconds=0)
    db.sessions.insert_many([
        {"_id": "past", "at": now - hour},
        {"_id": "past-array", "at": [now + hour, now - hour]},  # earliest date counts
        {"_id": "future", "at": now + hour},
        {"_id": "future-array", "at": [now + hour, now + 2 * hour]},
        {"_id": "string", "at": "2000-01-01"},
        {"_id": "number", "at": 12},
        {"_id": "null", "at": None},
        {"_id": "missing"},
    ])
    wait_until(lambda: db.sessions.count_documents({}) == 6, timeout=DEADLINE, interval=0.1,
               message="expired documents deleted")
    assert _ids(db, "sessions") == sorted(["future", "future-array", "string", "number", "null",
                                           "missing"])


def test_expire_after_seconds_is_added_to_the_date(db: Db) -> None:
    now = _now()
    db.tokens.create_index("issued", expireAfterSeconds=3600)
    db.tokens.insert_many([
        {"_id": "old", "issued": now - datetime.timedelta(hours=2)},
        {"_id": "recent", "issued": now - datetime.timedelta(minutes=30)},
    ])
    wait_until(lambda: db.tokens.find_one({"_id": "old"}) is None, timeout=DEADLINE,
               interval=0.1, message="the two-hour-old token deleted")
    assert _ids(db, "tokens") == ["recent"]


def test_documents_expire_once_their_time_comes(db: Db) -> None:
    db.soon.create_index("at", expireAfterSeconds=0)
    db.soon.insert_one({"_id": 1, "at": _now() + datetime.timedelta(seconds=1)})
    wait_until(lambda: db.soon.find_one({"_id": 1}) is None, timeout=DEADLINE, interval=0.1,
               message="document deleted once its date has passed")


@pytest.mark.parametrize("direction", [1, -1], ids=["ascending", "descending"])
def test_partial_ttl_index_expires_only_matching_documents(db: Db, direction: int) -> None:
    past = _now() - datetime.timedelta(days=1)
    db.mixed.create_index([("at", direction)], expireAfterSeconds=0,
                          partialFilterExpression={"kind": "temp"})
    db.mixed.insert_many([
        {"_id": "temp", "kind": "temp", "at": past},
        {"_id": "keep", "kind": "keep", "at": past},
    ])
    # One monitor pass handles the whole index, so once "temp" is gone "keep" was looked at.
    wait_until(lambda: db.mixed.find_one({"_id": "temp"}) is None, timeout=DEADLINE,
               interval=0.1, message="the matching expired document deleted")
    assert _ids(db, "mixed") == ["keep"]


def test_ttl_deletes_appear_in_change_streams(db: Db) -> None:
    db.watched.create_index("at", expireAfterSeconds=0)
    with db.watched.watch(max_await_time_ms=200) as stream:
        db.watched.insert_one({"_id": "x", "at": _now() - datetime.timedelta(minutes=1)})
        events: list[dict[str, Any]] = []

        def got_delete() -> bool:
            event = stream.try_next()
            if event is not None:
                events.append(event)
            return any(e["operationType"] == "delete" for e in events)

        wait_until(got_delete, timeout=DEADLINE, interval=0, message="the TTL delete event")
    assert [(e["operationType"], e["documentKey"]) for e in events] == [
        ("insert", {"_id": "x"}), ("delete", {"_id": "x"})]


def test_many_expired_documents_are_all_deleted(db: Db) -> None:
    past = _now() - datetime.timedelta(hours=1)
    db.bulk.create_index("at", expireAfterSeconds=0)
    db.bulk.insert_many([{"_id": n, "at": past} for n in range(12_000)])
    db.bulk.insert_one({"_id": "live", "at": _now() + datetime.timedelta(hours=1)})
    wait_until(lambda: db.bulk.count_documents({}) == 1, timeout=DEADLINE, interval=0.2,
               message="12000 expired documents deleted")
    assert _ids(db, "bulk") == ["live"]


# -- embedded server specifics ----------------------------------------------------------------


@pytest.mark.embedded_only
def test_ttl_index_survives_kill_and_monitor_runs_after_restart(
        fresh_server: ServerFactory) -> None:
    server = fresh_server()
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    client.app.ttl.create_index("at", expireAfterSeconds=2)
    client.app.ttl.insert_many([{"_id": "soon", "at": _now()},
                                {"_id": "later", "at": _now() + datetime.timedelta(days=1)}])
    client.close()
    server.kill()
    server.restart()
    client = MongoClient(server.uri)
    try:
        assert client.app.ttl.index_information()["at_1"]["expireAfterSeconds"] == 2
        wait_until(lambda: client.app.ttl.find_one({"_id": "soon"}) is None, timeout=DEADLINE,
                   interval=0.1, message="expired after the restart")
        assert _ids(client.app, "ttl") == ["later"]
    finally:
        client.close()
    # The TTL deletes themselves are durable.
    server.kill()
    server.restart()
    client = MongoClient(server.uri)
    try:
        assert _ids(client.app, "ttl") == ["later"]
    finally:
        client.close()


@pytest.mark.embedded_only
def test_ttl_leaves_documents_of_open_transactions_alone(db: Db) -> None:
    # Deleting a document an open transaction has written would make its commit fail with a
    # write conflict; the monitor leaves it for a later pass instead.
    past = _now() - datetime.timedelta(hours=1)
    db.txn_ttl.insert_many([{"_id": "locked", "at": past, "n": 0}, {"_id": "free", "at": past}])
    with db.client.start_session() as session:
        session.start_transaction()
        db.txn_ttl.update_one({"_id": "locked"}, {"$inc": {"n": 1}}, session=session)
        db.txn_ttl.create_index("at", expireAfterSeconds=0)
        wait_until(lambda: db.txn_ttl.find_one({"_id": "free"}) is None, timeout=DEADLINE,
                   interval=0.1, message="a monitor pass")
        assert db.txn_ttl.find_one({"_id": "locked"}) is not None
        session.commit_transaction()
    wait_until(lambda: db.txn_ttl.find_one({"_id": "locked"}) is None, timeout=DEADLINE,
               interval=0.1, message="deleted once no transaction holds it")


@pytest.mark.embedded_only
def test_collmod_expire_after_seconds_survives_kill(fresh_server: ServerFactory) -> None:
    server = fresh_server()
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    client.app.ttl.create_index("at", expireAfterSeconds=3600)
    client.app.command("collMod", "ttl", index={"name": "at_1", "expireAfterSeconds": 60})
    client.close()
    server.kill()
    server.restart()
    client = MongoClient(server.uri)
    try:
        assert client.app.ttl.index_information()["at_1"]["expireAfterSeconds"] == 60
    finally:
        client.close()
