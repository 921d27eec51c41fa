"""Commands shells and GUIs send (mongosh ``rs.status()``, Compass, ``db.getProfilingStatus()``),
answered in mongod 7.0's shapes (manual: "Database Commands", diagnostic and replication)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure


def test_repl_set_get_status_reports_one_healthy_primary(
        client: MongoClient[dict[str, Any]]) -> None:
    """``replSetGetStatus``: ``set``, ``myState: 1`` and one member with ``self: true``."""
    status = client.admin.command("replSetGetStatus")
    hello = client.admin.command("hello")
    assert status["set"] == hello["setName"] and status["myState"] == 1
    [member] = status["members"]
    assert member["stateStr"] == "PRIMARY" and member["self"] is True
    assert member["name"] == hello["me"]


def test_repl_set_get_status_only_on_admin(db: Database[dict[str, Any]]) -> None:
    """mongod: "replSetGetStatus may only be run against the admin database." (13)"""
    with pytest.raises(OperationFailure) as info:
        db.command("replSetGetStatus")
    assert info.value.code == 13


def test_default_read_write_concern_is_the_implicit_one(
        client: MongoClient[dict[str, Any]]) -> None:
    reply = client.admin.command("getDefaultRWConcern")
    assert reply["defaultWriteConcern"]["w"] == "majority"
    assert reply["defaultReadConcernSource"] == "implicit"


def test_data_size_counts_bson_bytes(db: Database[dict[str, Any]]) -> None:
    """``dataSize`` of a namespace: BSON size and count of its documents."""
    db.items.insert_many([{"_id": i} for i in range(3)])  # 14 bytes each
    reply = db.command("dataSize", f"{db.name}.items")
    assert reply["numObjects"] == 3 and reply["size"] == 42


def test_db_hash_changes_with_content_only(db: Database[dict[str, Any]]) -> None:
    """``dbHash``: equal content, equal hash; a write changes that collection's hash."""
    db.a.insert_one({"_id": 1, "x": 1})
    db.b.insert_one({"_id": 1, "x": 1})
    first = db.command("dbHash")
    assert first["collections"]["a"] == first["collections"]["b"]
    db.b.update_one({"_id": 1}, {"$set": {"x": 2}})
    second = db.command("dbHash", collections=["a", "b"])
    assert second["collections"]["a"] == first["collections"]["a"]
    assert second["collections"]["b"] != first["collections"]["b"]
    assert second["md5"] != first["md5"]


def test_profile_level_is_off_and_cannot_be_turned_on(db: Database[dict[str, Any]]) -> None:
    """``profile: -1`` reports ``was: 0``; enabling the profiler is refused (no system.profile)
    with IllegalOperation (20) rather than pretending to record."""
    assert db.command("profile", -1)["was"] == 0
    with pytest.raises(OperationFailure) as info:
        db.command("profile", 2)
    assert info.value.code == 20 and "profiler" in str(info.value)


def test_shell_helpers_answer(client: MongoClient[dict[str, Any]]) -> None:
    """``top``, ``lockInfo``, ``connPoolStats`` and ``killOp`` answer ok (mongosh helpers)."""
    for body in ({"top": 1}, {"lockInfo": 1}, {"connPoolStats": 1}, {"killOp": 1, "op": 12345}):
        assert client.admin.command(body)["ok"] == 1.0
    with pytest.raises(OperationFailure) as info:
        client.admin.command("killOp")
    assert info.value.code == 40414  # "BSON field 'killOp.op' is missing but a required field"


def test_administration_commands_tools_send(client: MongoClient[dict[str, Any]],
                                            db: Database[dict[str, Any]]) -> None:
    """``fsync``, ``logRotate``, plan-cache commands, FCV 7.0, ``changeStreamOptions`` and
    ``rs.conf()`` answer; ``fsync`` with ``lock`` and a foreign FCV are refused with a reason."""
    assert client.admin.command("fsync")["ok"] == 1.0
    with pytest.raises(OperationFailure) as info:
        client.admin.command("fsync", lock=True)
    assert info.value.code == 20 and "lock" in str(info.value)
    assert client.admin.command("logRotate")["ok"] == 1.0
    db.items.insert_one({})
    assert db.command("planCacheListFilters", "items")["filters"] == []
    assert db.command("planCacheClear", "items")["ok"] == 1.0
    assert client.admin.command("setFeatureCompatibilityVersion", "7.0", confirm=True)["ok"]
    with pytest.raises(OperationFailure):
        client.admin.command("setFeatureCompatibilityVersion", "8.0", confirm=True)
    [param] = client.admin.command("getClusterParameter", "changeStreamOptions")[
        "clusterParameters"]
    assert param["_id"] == "changeStreamOptions"
    config = client.admin.command("replSetGetConfig")["config"]
    assert config["_id"] == client.admin.command("hello")["setName"]
    assert [m["host"] for m in config["members"]] == [client.admin.command("hello")["me"]]
