"""The cheap common paths of command dispatch answer exactly like the general ones.

Every command pays the server's fixed cost (framing, generic argument checks, session lookup,
reply building), so those steps take a short path when a command has nothing unusual: an OP_MSG
with one body section, no ``maxTimeMS``/``autocommit``/``startTransaction``/``readConcern``, an
update statement without ``sort``, a collection without a default collation. Each test here
sends the unusual variant next to the usual one and checks MongoDB's answer (codes and messages
as mongod's), so a short path that skips a check or leaks state between commands, sessions or
connections fails here.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import bson
import pytest
from bson.int64 import Int64
from pymongo.database import Database
from raw_wire import HEADER, OP_MSG, RawConnection, RawSession, new_lsid, op_msg

from runtime.embedded import wire
from runtime.embedded.crc32c import crc32c

Db = Database[dict[str, Any]]
TYPE_MISMATCH = 14
INVALID_OPTIONS = 72
NOT_A_RETRYABLE_WRITE_COMMAND = 50768
TRANSACTION_TOO_OLD = 225
MISSING_FIELD = 40414


def _payload(*sections: bytes, flags: int = 0) -> bytes:
    return struct.pack("<I", flags) + b"".join(sections)


def _body(doc: dict[str, Any]) -> bytes:
    return b"\x00" + bson.encode(doc, codec_options=wire.CODEC)


def _sequence(identifier: str, *docs: dict[str, Any]) -> bytes:
    content = identifier.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
    return b"\x01" + struct.pack("<i", 4 + len(content)) + content


def _parse(payload: bytes) -> wire.Request:
    header = wire.Header(HEADER.size + len(payload), 5, 0, wire.OP_MSG)
    return wire.parse_op_msg(header, payload)


def _bad_request(payload: bytes) -> tuple[int, str]:
    with pytest.raises(wire.BadRequest) as caught:
        _parse(payload)
    return caught.value.code, caught.value.message


# -- OP_MSG framing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "more_to_come", "exhaust"), [
    (0, False, False), (wire.FLAG_MORE_TO_COME, True, False),
    (wire.FLAG_EXHAUST_ALLOWED, False, True)])
def test_a_lone_body_section_keeps_its_flags(flags: int, more_to_come: bool,
                                             exhaust: bool) -> None:
    request = _parse(_payload(_body({"ping": 1, "$db": "admin"}), flags=flags))
    assert request.body == {"ping": 1, "$db": "admin"}
    assert (request.more_to_come, request.exhaust_allowed) == (more_to_come, exhaust)
    assert request.request_id == 5 and request.op_code == wire.OP_MSG
    assert request.sequences == {}


def test_a_body_followed_by_a_sequence_gets_the_sequence_merged() -> None:
    docs = [{"_id": 1}, {"_id": 2}]
    request = _parse(_payload(_body({"insert": "c", "$db": "d"}), _sequence("documents", *docs)))
    assert request.body == {"insert": "c", "$db": "d", "documents": docs}
    assert request.sequences == {"documents": docs}


def test_what_follows_a_body_section_is_still_checked() -> None:
    ping = _body({"ping": 1, "$db": "admin"})
    assert _bad_request(_payload(ping, ping))[0] == 40430
    assert _bad_request(_payload(ping, b"\x07"))[0] == 40432
    assert _bad_request(_payload(ping, b"\x01\x03"))[0] == wire.ErrorCode.ProtocolError
    assert _bad_request(_payload(_body({"a": 1, "s": 2}), _sequence("s", {"x": 1})))[0] == 40433


def test_a_body_section_ending_before_the_checksum_is_the_whole_message() -> None:
    payload = _payload(_body({"ping": 1, "$db": "admin"}), flags=wire.FLAG_CHECKSUM_PRESENT)
    request = _parse(payload + b"\x00\x00\x00\x00")
    assert request.body == {"ping": 1, "$db": "admin"}
    # Without room for the checksum, the same body overruns the message.
    assert _bad_request(payload)[0] == wire.ErrorCode.ProtocolError


def test_an_encoded_reply_is_one_section_with_its_flags() -> None:
    doc = {"ok": 1.0, "n": Int64(3)}
    for flags in (0, wire.FLAG_MORE_TO_COME):
        data = wire.encode_op_msg(11, 12, doc, flags=flags)
        length, request_id, response_to, op_code = HEADER.unpack_from(data)
        assert (length, request_id, response_to, op_code) == (len(data), 12, 11, OP_MSG)
        assert struct.unpack_from("<I", data, 16)[0] == flags
        assert data[20] == 0
        assert bson.decode(data[21:], codec_options=wire.CODEC) == doc


def test_a_checksummed_ping_is_served(mongodb_uri: str) -> None:
    payload = _payload(_body({"ping": 1, "$db": "admin"}), flags=wire.FLAG_CHECKSUM_PRESENT)
    header = HEADER.pack(HEADER.size + len(payload) + 4, 31, 0, OP_MSG)
    data = header + payload
    data += struct.pack("<I", crc32c(data))
    with RawConnection(mongodb_uri) as conn:
        conn.send(data)
        reply = conn.read_reply()
        assert reply is not None and reply.response_to == 31
        assert reply.doc["ok"] == 1.0


def test_a_more_to_come_request_gets_no_reply(mongodb_uri: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        conn.send(op_msg({"ping": 1, "$db": "admin"}, request_id=41,
                         flags=wire.FLAG_MORE_TO_COME))
        conn.send(op_msg({"ping": 1, "$db": "admin"}, request_id=42))
        reply = conn.read_reply()
        assert reply is not None and reply.response_to == 42


def test_an_exhaust_stream_chains_its_replies(mongodb_uri: str, db: Db) -> None:
    db.ex.insert_many([{"_id": i} for i in range(7)])
    with RawConnection(mongodb_uri) as conn:
        first = conn.command({"find": "ex", "batchSize": 2, "$db": db.name})
        cursor_id = first["cursor"]["id"]
        conn.send(op_msg({"getMore": cursor_id, "collection": "ex", "batchSize": 2,
                          "$db": db.name}, request_id=51, flags=wire.FLAG_EXHAUST_ALLOWED))
        response_to, seen, flags = 51, [], []
        while True:
            reply = conn.read_reply()
            assert reply is not None and reply.response_to == response_to
            seen += [d["_id"] for d in reply.doc["cursor"]["nextBatch"]]
            flags.append(reply.flags)
            response_to = reply.request_id
            if not reply.flags & wire.FLAG_MORE_TO_COME:
                break
    assert seen == [2, 3, 4, 5, 6]
    assert flags == [wire.FLAG_MORE_TO_COME, wire.FLAG_MORE_TO_COME, 0]


# -- generic arguments ------------------------------------------------------------------------


def _error(conn: RawConnection, body: dict[str, Any]) -> tuple[int, str]:
    reply = conn.command(body)
    assert reply["ok"] == 0.0, reply
    return reply["code"], reply["errmsg"]


@pytest.mark.parametrize(("fields", "code", "message"), [
    ({"lsid": "s"}, TYPE_MISMATCH,
     "BSON field 'OperationSessionInfo.lsid' is the wrong type 'string', expected type "
     "'object'"),
    ({"lsid": {}}, MISSING_FIELD, "BSON field 'lsid.id' is missing but a required field"),
    ({"lsid": {"id": "x"}}, TYPE_MISMATCH,
     "BSON field 'lsid.id' is the wrong type, expected a UUID (binData subtype 4)"),
    ({"autocommit": 1}, TYPE_MISMATCH,
     "BSON field 'OperationSessionInfo.autocommit' is the wrong type 'int', expected type "
     "'bool'"),
    ({"startTransaction": "yes"}, TYPE_MISMATCH,
     "BSON field 'OperationSessionInfo.startTransaction' is the wrong type 'string', expected "
     "type 'bool'"),
    ({"autocommit": True}, INVALID_OPTIONS, "autocommit may only be specified as false"),
    ({"startTransaction": True}, NOT_A_RETRYABLE_WRITE_COMMAND,
     "startTransaction requires autocommit: false"),
    ({"maxTimeMS": "x"}, TYPE_MISMATCH,
     "BSON field 'ping.maxTimeMS' is the wrong type 'string', expected types "
     "'[long, int, decimal, double]'"),
    ({"txnNumber": Int64(1), "lsid": "new"}, NOT_A_RETRYABLE_WRITE_COMMAND,
     "txnNumber may only be provided for multi-document transactions and retryable write "
     "commands; 'ping' is neither"),
    ({"readConcern": {"level": "snapshot"}}, INVALID_OPTIONS,
     "Command ping does not support readConcern level snapshot outside a multi-document "
     "transaction"),
])
def test_generic_fields_are_checked_on_every_command(mongodb_uri: str, fields: dict[str, Any],
                                                     code: int, message: str) -> None:
    body = {"ping": 1, **fields, "$db": "admin"}
    if body.get("lsid") == "new":
        body["lsid"] = new_lsid()
    with RawConnection(mongodb_uri) as conn:
        assert _error(conn, body) == (code, message)
        # ...and the same connection then serves a plain command.
        assert conn.command({"ping": 1, "lsid": new_lsid(), "$db": "admin"})["ok"] == 1.0


def test_a_null_session_flag_is_as_if_absent(mongodb_uri: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        reply = conn.command({"ping": 1, "autocommit": None, "startTransaction": None,
                              "$db": "admin"})
        assert reply["ok"] == 1.0


def test_a_snapshot_read_outside_a_transaction_reports_its_time(db: Db,
                                                                mongodb_uri: str) -> None:
    db.snap.insert_one({"_id": 1})
    with RawConnection(mongodb_uri) as conn:
        reply = conn.command({"find": "snap", "readConcern": {"level": "snapshot"},
                              "$db": db.name})
    assert reply["ok"] == 1.0
    assert "atClusterTime" in reply["cursor"]


def test_a_time_limit_ends_with_its_command(db: Db, mongodb_uri: str) -> None:
    """A command without ``maxTimeMS`` after one with a tiny limit on the same connection
    runs unlimited (the earlier deadline is not inherited)."""
    db.slow.insert_many([{"_id": i, "v": i % 7} for i in range(3000)])
    with RawConnection(mongodb_uri) as conn:
        assert conn.command({"find": "slow", "filter": {"_id": 1}, "maxTimeMS": 1,
                             "$db": db.name})["ok"] == 1.0
        time.sleep(0.02)
        reply = conn.command({"aggregate": "slow", "pipeline": [
            {"$match": {"v": {"$gte": 0}}}, {"$group": {"_id": "$v", "n": {"$sum": 1}}}],
            "cursor": {}, "$db": db.name})
    assert reply["ok"] == 1.0, reply
    assert sum(d["n"] for d in reply["cursor"]["firstBatch"]) == 3000


# -- sessions ---------------------------------------------------------------------------------


def test_a_retry_on_another_connection_finds_the_sessions_reply(db: Db,
                                                                mongodb_uri: str) -> None:
    update = {"update": "retry", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}},
                                              "upsert": True}]}
    with RawConnection(mongodb_uri) as first, RawConnection(mongodb_uri) as second:
        session = RawSession(first, db.name)
        assert session.run(update, 5)["n"] == 1
        session.conn = second
        assert session.run(update, 5)["n"] == 1  # the recorded reply: not applied again
        too_old = session.run(update, 4)
        assert too_old["code"] == TRANSACTION_TOO_OLD
    assert db.retry.find_one({"_id": 1}) == {"_id": 1, "n": 1}


def test_sessions_on_one_connection_keep_their_own_state(db: Db, mongodb_uri: str) -> None:
    update = {"update": "own", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}},
                                            "upsert": True}]}
    with RawConnection(mongodb_uri) as conn:
        one, two = RawSession(conn, db.name), RawSession(conn, db.name)
        one.run(update, 9)
        two.run(update, 9)  # the same txnNumber on another lsid is a new write
        one.run(update, 9)  # a retry of the first session's write
        assert two.run(update, 3)["code"] == TRANSACTION_TOO_OLD
        assert one.run(update, 10)["ok"] == 1.0  # a newer write of the first session
    assert db.own.find_one({"_id": 1}) == {"_id": 1, "n": 3}


# -- find and update arguments ----------------------------------------------------------------


@pytest.mark.parametrize(("fields", "code", "message"), [
    ({"filter": 1, "singleBatch": "x"}, TYPE_MISMATCH,
     "BSON field 'find.filter' is the wrong type 'int', expected type 'object'"),
    ({"singleBatch": "x", "skip": "y"}, TYPE_MISMATCH,
     "BSON field 'find.singleBatch' is the wrong type 'string', expected types "
     "'[bool, long, int, decimal, double]'"),
    ({"limit": "x", "skip": "y"}, TYPE_MISMATCH,
     "BSON field 'find.skip' is the wrong type 'string', expected types "
     "'[long, int, decimal, double]'"),
    ({"skip": -1}, 51024, "BSON field 'skip' value must be >= 0, actual value '-1'"),
    ({"batchSize": -2}, 51024, "BSON field 'batchSize' value must be >= 0, actual value '-2'"),
    ({"let": [1], "hint": 3}, TYPE_MISMATCH,
     "BSON field 'find.let' is the wrong type 'array', expected type 'object'"),
    ({"hint": 3}, 9, "hint must be either a string or nested object"),
])
def test_find_arguments_are_checked_in_mongods_order(db: Db, mongodb_uri: str,
                                                     fields: dict[str, Any], code: int,
                                                     message: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        assert _error(conn, {"find": "args", **fields, "$db": db.name}) == (code, message)


def test_find_accepts_null_and_numeric_flags(db: Db, mongodb_uri: str) -> None:
    db.args.insert_many([{"_id": i} for i in range(3)])
    with RawConnection(mongodb_uri) as conn:
        reply = conn.command({"find": "args", "filter": None, "sort": None, "skip": None,
                              "limit": None, "batchSize": None, "singleBatch": 1,
                              "noCursorTimeout": 0.0, "$db": db.name})
    assert reply["ok"] == 1.0, reply
    assert [d["_id"] for d in reply["cursor"]["firstBatch"]] == [0, 1, 2]
    assert reply["cursor"]["id"] == 0  # singleBatch: 1 is true


def test_a_numeric_multi_is_a_flag(db: Db) -> None:
    db.multi.insert_many([{"_id": i, "k": 1} for i in range(3)])
    many = db.command({"update": "multi", "updates": [
        {"q": {"k": 1}, "u": {"$set": {"a": 1}}, "multi": 1}]})
    assert (many["n"], many["nModified"]) == (3, 3)
    one = db.command({"update": "multi", "updates": [
        {"q": {"k": 1}, "u": {"$set": {"b": 1}}, "multi": 0.0}]})
    assert (one["n"], one["nModified"]) == (1, 1)


def test_an_update_statement_follows_its_sort(db: Db) -> None:
    db.sorted.insert_many([{"_id": i, "k": 1, "r": r} for i, r in enumerate([5, 2, 9])])
    reply = db.command({"update": "sorted", "updates": [
        {"q": {"k": 1}, "u": {"$set": {"hit": True}}, "sort": {"r": -1}}]})
    assert reply["nModified"] == 1
    assert [d["_id"] for d in db.sorted.find({"hit": True})] == [2]


def test_a_collections_default_collation_is_used_by_updates_and_finds(db: Db) -> None:
    db.create_collection("folded", collation={"locale": "en", "strength": 2})
    db.folded.insert_one({"_id": 1, "name": "ABC"})
    assert db.folded.update_one({"name": "abc"}, {"$set": {"seen": 1}}).matched_count == 1
    assert db.folded.find_one({"name": "aBc"}) == {"_id": 1, "name": "ABC", "seen": 1}
    assert db.folded.delete_many({"name": "abc"}).deleted_count == 1
    db.plain.insert_one({"_id": 1, "name": "ABC"})
    assert db.plain.update_one({"name": "abc"}, {"$set": {"seen": 1}}).matched_count == 0
    assert db.plain.update_one({"name": "abc"}, {"$set": {"seen": 1}},
                               collation={"locale": "en", "strength": 2}).matched_count == 1
