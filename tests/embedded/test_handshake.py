"""Handshake: what drivers see of the server, over OP_MSG and the legacy OP_QUERY.

PyMongo (sync and asyncio) must discover a replica-set primary from a plain URI, and a Single
topology with ``directConnection=true``, with sessions, retryable writes and transactions on.
Node's first hello is an OP_QUERY (tests/node covers the real driver); here it is sent by hand.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from failpoint_helpers import CommandRecorder
from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure
from raw_wire import HEADER, OP_REPLY, RawConnection, address, op_msg, op_query

CLIENT_METADATA = {"driver": {"name": "raw-test", "version": "0"},
                   "os": {"type": "Linux"}, "application": {"name": "handshake-test"}}


def _with_option(uri: str, option: str) -> str:
    base = uri if "/" in uri.split("://", 1)[1] else uri + "/"
    return base + ("&" if "?" in base else "?") + option


def test_plain_uri_discovers_replica_set_primary(mongodb_uri: str) -> None:
    recorder = CommandRecorder()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[recorder])
    try:
        client.admin.command("ping")
        topology = client.topology_description
        assert topology.topology_type_name == "ReplicaSetWithPrimary"
        servers = list(topology.server_descriptions().values())
        assert [s.server_type_name for s in servers] == ["RSPrimary"]
        assert servers[0].replica_set_name
        assert servers[0].max_wire_version >= 9
        assert topology.logical_session_timeout_minutes is not None
        assert servers[0].retryable_writes_supported

        coll = client.get_database("handshake_plain").items
        coll.drop()
        coll.insert_one({"_id": 1})
        (insert,) = recorder.named("insert")
        assert "lsid" in insert and "txnNumber" in insert  # sessions and retryable writes
        with client.start_session() as session, session.start_transaction():
            coll.insert_one({"_id": 2}, session=session)
        assert sorted(d["_id"] for d in coll.find()) == [1, 2]
        coll.drop()
    finally:
        client.close()


def test_direct_connection_gives_single_topology_with_all_features(mongodb_uri: str) -> None:
    recorder = CommandRecorder()
    client: MongoClient[dict[str, Any]] = MongoClient(
        _with_option(mongodb_uri, "directConnection=true"), event_listeners=[recorder])
    try:
        client.admin.command("ping")
        topology = client.topology_description
        assert topology.topology_type_name == "Single"
        (server,) = topology.server_descriptions().values()
        assert server.server_type_name == "RSPrimary"
        coll = client.get_database("handshake_direct").items
        coll.drop()
        coll.insert_one({"_id": 1})
        (insert,) = recorder.named("insert")
        assert "txnNumber" in insert
        with client.start_session() as session, session.start_transaction():
            coll.update_one({"_id": 1}, {"$set": {"x": 1}}, session=session)
        assert coll.find_one({"_id": 1}) == {"_id": 1, "x": 1}
        coll.drop()
    finally:
        client.close()


async def test_async_client_discovers_primary_and_runs_a_transaction(mongodb_uri: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    try:
        await client.admin.command("ping")
        topology = client.topology_description
        assert topology.topology_type_name == "ReplicaSetWithPrimary"
        assert [s.server_type_name for s in topology.server_descriptions().values()] == [
            "RSPrimary"]
        coll = client.get_database("handshake_async").items
        await coll.drop()

        async def callback(session: Any) -> str:
            await coll.insert_one({"_id": "a"}, session=session)
            await coll.insert_one({"_id": "b"}, session=session)
            return "done"

        async with client.start_session() as session:
            assert await session.with_transaction(callback) == "done"
        assert await coll.count_documents({}) == 2
        await coll.drop()
    finally:
        await client.close()


@pytest.mark.parametrize("name", ["hello", "isMaster", "ismaster"])
def test_hello_aliases(db: Database[dict[str, Any]], name: str) -> None:
    reply = db.client.admin.command(name)
    assert reply["ok"] == 1
    assert reply["isWritablePrimary" if name == "hello" else "ismaster"] is True
    if name == "hello":
        assert "ismaster" not in reply
    assert reply["setName"]
    assert reply["primary"] in reply["hosts"]
    assert reply["minWireVersion"] <= 9 <= reply["maxWireVersion"]
    assert reply["logicalSessionTimeoutMinutes"] > 0
    assert reply["maxBsonObjectSize"] == 16 * 1024 * 1024
    assert "topologyVersion" not in reply or reply["topologyVersion"]
    # Any database works, not only admin.
    assert db.command(name)["ok"] == 1


@pytest.mark.embedded_only
def test_hello_advertises_the_address_clients_connect_to(mongodb_uri: str) -> None:
    host, port = address(mongodb_uri)
    with RawConnection(mongodb_uri) as conn:
        reply = conn.command({"hello": 1, "$db": "admin"})
    assert reply["hosts"] == [f"{host}:{port}"]
    assert reply["me"] == reply["primary"] == f"{host}:{port}"
    assert "topologyVersion" not in reply  # drivers poll instead of streaming
    assert "compression" not in reply


@pytest.mark.parametrize("name", ["isMaster", "ismaster", "hello"])
def test_legacy_op_query_hello_gets_op_reply(mongodb_uri: str, name: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        conn.send(op_query({name: 1, "helloOk": True, "client": CLIENT_METADATA},
                           request_id=4242))
        reply = conn.read_reply()
        assert reply is not None
        assert reply.op_code == OP_REPLY
        assert reply.response_to == 4242
        assert reply.number_returned == 1
        assert reply.doc["ok"] == 1
        assert reply.doc["minWireVersion"] == 0 or "minWireVersion" in reply.doc
        assert reply.doc["maxWireVersion"] >= 9
        assert reply.doc["setName"]
        # After an OP_QUERY handshake the connection speaks OP_MSG (as Node does).
        assert conn.command({"ping": 1, "$db": "admin"})["ok"] == 1


def test_op_reply_layout(mongodb_uri: str) -> None:
    """The OP_REPLY body is flags, cursorID 0, startingFrom 0, numberReturned 1, one document."""
    with RawConnection(mongodb_uri) as conn:
        conn.send(op_query({"isMaster": 1}))
        header = conn._read_exactly(HEADER.size)
        assert header is not None
        length, _request_id, _response_to, op_code = HEADER.unpack(header)
        payload = conn._read_exactly(length - HEADER.size)
        assert payload is not None
    assert op_code == OP_REPLY
    flags, cursor_id, starting_from, number_returned = struct.unpack_from("<iqii", payload)
    assert flags & 0b11 == 0  # neither CursorNotFound nor QueryFailure
    assert (cursor_id, starting_from, number_returned) == (0, 0, 1)
    (doc_length,) = struct.unpack_from("<i", payload, 20)
    assert 20 + doc_length == len(payload)


@pytest.mark.parametrize("command", [{"ping": 1}, {"find": "items"}, {"insert": "items"},
                                     {"buildInfo": 1}])
def test_other_op_query_commands_are_rejected_with_352(mongodb_uri: str,
                                                       command: dict[str, Any]) -> None:
    with RawConnection(mongodb_uri) as conn:
        conn.send(op_query(command, collection="test.$cmd", request_id=77))
        reply = conn.read_reply()
        assert reply is not None and reply.op_code == OP_REPLY and reply.response_to == 77
        assert reply.doc["ok"] == 0
        assert reply.doc["code"] == 352
        assert reply.doc["errmsg"]
        # The connection stays usable.
        assert conn.command({"ping": 1, "$db": "admin"})["ok"] == 1


def test_client_metadata_only_on_the_first_hello(mongodb_uri: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        first = conn.command({"hello": 1, "client": CLIENT_METADATA, "$db": "admin"})
        assert first["ok"] == 1
        # Hellos without metadata are fine (that is what monitoring sends).
        assert conn.command({"hello": 1, "$db": "admin"})["ok"] == 1
        second = conn.command({"hello": 1, "client": CLIENT_METADATA, "$db": "admin"})
        assert second["ok"] == 0
        assert second["code"] == 186
        assert second["errmsg"]
        assert conn.command({"ping": 1, "$db": "admin"})["ok"] == 1


def test_client_metadata_after_op_query_handshake_is_rejected(mongodb_uri: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        conn.send(op_query({"isMaster": 1, "client": CLIENT_METADATA}))
        reply = conn.read_reply()
        assert reply is not None and reply.doc["ok"] == 1
        again = conn.command({"isMaster": 1, "client": CLIENT_METADATA, "$db": "admin"})
        assert again["code"] == 186


def test_metadata_is_per_connection(mongodb_uri: str) -> None:
    for _ in range(2):
        with RawConnection(mongodb_uri) as conn:
            assert conn.command({"hello": 1, "client": CLIENT_METADATA, "$db": "admin"})["ok"]


def test_unknown_fields_and_gossip_are_accepted(mongodb_uri: str) -> None:
    """Drivers add fields the server must ignore (backpressure, compression, $clusterTime)."""
    with RawConnection(mongodb_uri) as conn:
        hello = conn.command({"ismaster": 1, "helloOk": True, "backpressure": "2",
                              "compression": ["zlib"], "client": CLIENT_METADATA,
                              "$db": "admin"})
        assert hello["ok"] == 1
        assert "compression" not in hello  # nothing negotiated, so no OP_COMPRESSED
        cluster_time = hello.get("$clusterTime")
        body: dict[str, Any] = {"ping": 1, "$db": "admin",
                                "$readPreference": {"mode": "primaryPreferred"}}
        if cluster_time is not None:
            body["$clusterTime"] = cluster_time
        assert conn.command(body)["ok"] == 1


def test_hello_via_op_msg_reply_echoes_request_id(mongodb_uri: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        conn.send(op_msg({"hello": 1, "$db": "admin"}, request_id=99))
        reply = conn.read_reply()
        assert reply is not None
        assert reply.response_to == 99 and reply.flags == 0
        assert reply.doc["ok"] == 1


def test_pymongo_hello_command_after_handshake_is_allowed(
        client: MongoClient[dict[str, Any]]) -> None:
    # PyMongo's handshake already sent metadata; a plain hello on the same pool is fine,
    # and one with metadata is not.
    assert client.admin.command("hello")["ok"] == 1
    with pytest.raises(OperationFailure) as info:
        client.admin.command({"hello": 1, "client": CLIENT_METADATA})
    assert info.value.code == 186
