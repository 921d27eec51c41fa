"""Hostile wire input (issue 10, items 3 and 5): a malformed message inside a well-framed request
gets an error reply and the connection stays usable; only broken framing may close it. A
change-stream getMore always answers, whatever its ``maxTimeMS``.

The reproducers use raw sockets (see ``raw_wire.py``); the property tests mutate valid messages
with Hypothesis while keeping the framing intact, and check that a ``ping`` sent right behind
each one on the same connection is still answered.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from typing import Any

import bson
import pytest
from bson.code import Code
from bson.int64 import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_wire import HEADER, OP_MSG, RawConnection, Reply, op_msg, op_query

from runtime.embedded import change_streams
from runtime.embedded.crc32c import crc32c
from runtime.embedded.state import ServerConfig, ServerState

OP_REPLY = 1
PING = {"ping": 1, "$db": "admin"}
FUZZ_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])


def frame(payload: bytes, op_code: int = OP_MSG, request_id: int = 77) -> bytes:
    """A well-framed message: the length field matches the bytes."""
    return HEADER.pack(HEADER.size + len(payload), request_id, 0, op_code) + payload


def msg_payload(*sections: bytes, flags: int = 0) -> bytes:
    return struct.pack("<I", flags) + b"".join(sections)


def body(doc: dict[str, Any]) -> bytes:
    return b"\x00" + bson.encode(doc)


def sequence(identifier: bytes, *docs: dict[str, Any]) -> bytes:
    content = identifier + b"\x00" + b"".join(bson.encode(d) for d in docs)
    return b"\x01" + struct.pack("<i", 4 + len(content)) + content


def answer_then_ping(uri: str, data: bytes, request_id: int = 77) -> list[Reply]:
    """Send ``data`` then a ping on the same connection; the replies to ``data`` (asserting
    the connection stayed open and the ping was answered)."""
    with RawConnection(uri, timeout=15) as conn:
        conn.send(data)
        conn.send(op_msg(PING, request_id=999_999))
        replies: list[Reply] = []
        while True:
            reply = conn.read_reply()
            assert reply is not None, f"connection closed; replies so far: {replies}"
            if reply.response_to == 999_999:
                assert reply.doc["ok"] == 1, reply.doc
                return replies
            assert reply.response_to == request_id, reply.doc
            replies.append(reply)


def error_reply(uri: str, data: bytes) -> dict[str, Any]:
    replies = answer_then_ping(uri, data)
    assert len(replies) == 1, [r.doc for r in replies]
    doc = replies[0].doc
    assert doc["ok"] == 0 and doc["code"] != 1, doc
    return doc


# -- item 3: OP_QUERY -------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [5, None, [1, 2], "hello", True, 1.5],
                         ids=["int", "null", "array", "string", "bool", "double"])
def test_op_query_whose_query_is_not_a_document_gets_mongods_10065(mongodb_uri: str,
                                                                   wrapped: Any) -> None:
    """mongod: ``$query`` must be an object, error 10065 "invalid parameter: expected an
    object ($query)"; the connection used to end without a reply (117 fuzz cases)."""
    replies = answer_then_ping(mongodb_uri, op_query({"$query": wrapped}, request_id=77))
    assert len(replies) == 1 and replies[0].op_code == OP_REPLY
    doc = replies[0].doc
    assert doc["ok"] == 0 and doc["code"] == 10065, doc
    assert "expected an object ($query)" in doc["errmsg"]


@pytest.mark.parametrize("name", ["insert", "listIndexes", "find"])
def test_javascript_db_name_is_not_a_string(mongodb_uri: str, name: str) -> None:
    """``$db`` must be a BSON string; JavaScript code (a ``str`` subclass once decoded) got
    "internal error: unhashable type: 'Code'" (found by bench/fuzz_wire.py)."""
    replies = answer_then_ping(mongodb_uri, op_msg({name: "c", "documents": [{"a": 1}],
                                                    "$db": Code("fuzz")}, request_id=77))
    doc = replies[0].doc
    assert doc["ok"] == 0 and doc["code"] != 1, doc


def test_op_query_on_a_collection_gets_mongods_legacy_opcode_error(mongodb_uri: str) -> None:
    """mongod >= 5.1 answers a legacy query with ``$err`` and code 5739101."""
    replies = answer_then_ping(mongodb_uri, op_query({"a": 1}, collection="fuzz.things",
                                                     request_id=77))
    assert len(replies) == 1 and replies[0].op_code == OP_REPLY
    assert replies[0].flags & 2  # QueryFailure
    doc = replies[0].doc
    assert doc["code"] == 5739101 and doc["ok"] == 0
    assert doc["$err"].startswith("OP_QUERY is no longer supported")


def test_op_query_hello_still_works(mongodb_uri: str) -> None:
    replies = answer_then_ping(mongodb_uri, op_query({"$query": {"isMaster": 1}},
                                                     request_id=77))
    assert replies[0].doc["ok"] == 1 and replies[0].doc["ismaster"] is True


# -- item 3: OP_MSG ---------------------------------------------------------------------------

MALFORMED_OP_MSG = {
    # name: (payload, mongod's code)
    "unknown required flag bit (IllegalOpMsgFlag)": (msg_payload(body(PING), flags=1 << 4), 223),
    "two body sections": (msg_payload(body(PING), body(PING)), 40430),
    "no body section": (msg_payload(sequence(b"documents", {"a": 1})), 40587),
    "duplicate document sequence": (
        msg_payload(body({"insert": "x", "$db": "fuzz"}), sequence(b"documents", {"a": 1}),
                    sequence(b"documents", {"a": 2})), 40431),
    "field in body and sequence": (
        msg_payload(body({"insert": "x", "documents": [], "$db": "fuzz"}),
                    sequence(b"documents", {"a": 1})), 40433),
    "sequence identifier not valid UTF-8": (
        msg_payload(body({"insert": "x", "$db": "fuzz"}), sequence(b"\xff\xfe", {"a": 1})), 17),
    "sequence identifier not terminated": (
        msg_payload(body(PING), b"\x01" + struct.pack("<i", 8) + b"abcd"), 17),
    "unknown section kind": (msg_payload(b"\x05" + bson.encode(PING)), 40432),
    "trailing bytes": (msg_payload(body(PING)) + b"\x01\x02", 17),
    "checksum flag but too short": (msg_payload(b"\x00\x05", flags=1), 17),
}


@pytest.mark.parametrize("payload,code", list(MALFORMED_OP_MSG.values()),
                         ids=list(MALFORMED_OP_MSG))
def test_malformed_op_msg_gets_an_error_reply_and_the_connection_stays(
        mongodb_uri: str, payload: bytes, code: int) -> None:
    doc = error_reply(mongodb_uri, frame(payload))
    assert doc["code"] == code, doc


@pytest.mark.parametrize("op_code", [9999, 2002, 2005, OP_REPLY, 2012, 0, -1],
                         ids=["unknown", "OP_INSERT", "OP_GET_MORE", "OP_REPLY",
                              "OP_COMPRESSED", "zero", "negative"])
def test_unsupported_opcode_gets_an_error_reply(mongodb_uri: str, op_code: int) -> None:
    """Unknown and removed opcodes, and OP_COMPRESSED (no compressor is offered), are answered
    with an error document (legacy opcodes: mongod's 5739101) instead of a dropped
    connection."""
    payload = struct.pack("<iiB", OP_MSG, 5 + len(bson.encode(PING)), 0) + body(PING)
    doc = error_reply(mongodb_uri, frame(payload, op_code))
    assert doc["code"] in (17, 5739101), doc


def checksummed(doc: dict[str, Any], request_id: int = 77, corrupt: bool = False) -> bytes:
    payload = msg_payload(body(doc), flags=1)
    header = HEADER.pack(HEADER.size + len(payload) + 4, request_id, 0, OP_MSG)
    checksum = crc32c(header + payload) ^ (1 if corrupt else 0)
    return header + payload + struct.pack("<I", checksum)


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_op_msg_with_a_valid_checksum_is_served(mongodb_uri: str) -> None:
    replies = answer_then_ping(mongodb_uri, checksummed(PING))
    assert replies[0].doc["ok"] == 1


def test_op_msg_with_a_wrong_checksum_gets_checksum_mismatch(mongodb_uri: str) -> None:
    """mongod: ChecksumMismatch (282) "OP_MSG checksum does not match contents"."""
    doc = error_reply(mongodb_uri, checksummed(PING, corrupt=True))
    assert doc["code"] == 282 and doc["codeName"] == "ChecksumMismatch"
    assert doc["errmsg"] == "OP_MSG checksum does not match contents"


def test_large_checksummed_message_does_not_stall_other_clients(mongodb_uri: str) -> None:
    big = {"insert": "big", "documents": [{"_id": 1, "s": "x" * 2_000_000}],
           "$db": "wire_hostile_big"}
    with RawConnection(mongodb_uri, timeout=30) as slow, RawConnection(mongodb_uri) as other:
        slow.send(checksummed(big, corrupt=True))
        started = time.monotonic()
        assert other.command(PING)["ok"] == 1
        assert time.monotonic() - started < 5
        reply = slow.read_reply()
        assert reply is not None and reply.doc["code"] == 282


# -- item 5: maxTimeMS ------------------------------------------------------------------------

MAX_TIME_MS = [
    # value, code, message (mongod 7.0, parseMaxTimeMS and the IDL validator)
    (math.inf, 2, "9223372036854775807 value for maxTimeMS is out of range"),
    (-math.inf, 51024, "BSON field 'maxTimeMS' value must be >= 0, actual value "
     "'-9223372036854775808'"),
    (math.nan, 2, "maxTimeMS has non-integral value"),
    (1.5, 2, "maxTimeMS has non-integral value"),
    (-1, 51024, "BSON field 'maxTimeMS' value must be >= 0, actual value '-1'"),
    (Int64(2**31), 2, "2147483648 value for maxTimeMS is out of range"),
    ("x", 14, "BSON field 'getMore.maxTimeMS' is the wrong type 'string', expected types "
     "'[long, int, decimal, double]'"),
    (None, 2, "maxTimeMS must be a number"),
]


@pytest.fixture
def change_stream(mongodb_uri: str) -> Any:
    with RawConnection(mongodb_uri, timeout=20) as conn:
        opened = conn.command({"aggregate": "watched", "pipeline": [{"$changeStream": {}}],
                               "cursor": {}, "$db": "wire_hostile"})
        assert opened["ok"] == 1, opened
        yield conn, opened["cursor"]["id"]
        conn.command({"killCursors": "watched", "cursors": [opened["cursor"]["id"]],
                      "$db": "wire_hostile"})


@pytest.mark.parametrize("value,code,message", MAX_TIME_MS,
                         ids=["Infinity", "-Infinity", "NaN", "fraction", "negative",
                              "over int32", "string", "null"])
def test_change_stream_get_more_validates_max_time_ms(change_stream: Any, value: Any, code: int,
                                                      message: str) -> None:
    """The issue's reproducer: ``getMore`` of a change stream with ``maxTimeMS: Infinity``
    never answered. Now every invalid value gets mongod's error at once."""
    conn, cursor_id = change_stream
    started = time.monotonic()
    reply = conn.command({"getMore": cursor_id, "collection": "watched", "maxTimeMS": value,
                          "$db": "wire_hostile"})
    assert time.monotonic() - started < 5
    assert reply["ok"] == 0 and reply["code"] == code and reply["errmsg"] == message, reply


@pytest.mark.parametrize("command", [{"ping": 1, "$db": "admin"},
                                     {"find": "c", "$db": "wire_hostile"},
                                     {"aggregate": "c", "pipeline": [], "cursor": {},
                                      "$db": "wire_hostile"}])
def test_every_command_validates_max_time_ms(mongodb_uri: str, command: dict[str, Any]) -> None:
    with RawConnection(mongodb_uri) as conn:
        for value, code, _ in MAX_TIME_MS:
            reply = conn.command({**command, "maxTimeMS": value})
            assert reply["ok"] == 0 and reply["code"] == code, (value, reply)
        assert conn.command({**command, "maxTimeMS": Int64(100)})["ok"] == 1


def test_a_long_await_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid but huge ``maxTimeMS`` (2^31-1 ms, 24 days) on an awaitData getMore answers
    with an empty batch after the cap, so no request can hold the server for days."""
    monkeypatch.setattr(change_streams, "MAX_AWAIT_MS", 200)

    async def scenario() -> dict[str, Any]:
        state = ServerState(ServerConfig())
        connection: dict[str, Any] = {"id": 1, "peer": ""}
        opened = await state.execute({"aggregate": "c", "pipeline": [{"$changeStream": {}}],
                                      "cursor": {}, "$db": "d"}, connection)
        get_more = {"getMore": opened["cursor"]["id"], "collection": "c",
                    "maxTimeMS": 2**31 - 1, "$db": "d"}
        return await asyncio.wait_for(state.execute(get_more, connection), 5)

    started = time.monotonic()
    reply = asyncio.run(scenario())
    assert reply["ok"] == 1 and reply["cursor"]["nextBatch"] == []
    assert time.monotonic() - started < 3


# -- property tests ---------------------------------------------------------------------------

VALID = [
    op_msg({"insert": "fz", "documents": [{"_id": 1, "a": [1, {"b": "c"}]}],
            "$db": "wire_hostile_fuzz"}, request_id=77),
    op_msg({"find": "fz", "filter": {"a": {"$gt": 1}}, "limit": 3, "$db": "wire_hostile_fuzz"},
           request_id=77),
    op_msg({"update": "fz", "updates": [{"q": {}, "u": {"$set": {"x": 1}}, "multi": True}],
            "$db": "wire_hostile_fuzz"}, request_id=77),
    op_msg({"aggregate": "fz", "pipeline": [{"$match": {}}, {"$project": {"a": 1}}],
            "cursor": {}, "$db": "wire_hostile_fuzz"}, request_id=77),
    op_msg({"hello": 1, "$db": "admin"}, request_id=77),
    op_query({"isMaster": 1, "helloOk": True}, request_id=77),
    op_query({"$query": {"isMaster": 1}}, request_id=77),
    frame(msg_payload(body({"insert": "fz", "$db": "wire_hostile_fuzz"}),
                      sequence(b"documents", {"_id": 2}, {"_id": 3}))),
]

mutation = st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255))


@FUZZ_SETTINGS
@given(message=st.sampled_from(VALID), flips=st.lists(mutation, min_size=1, max_size=6),
       cut=st.integers(0, 8), extra=st.binary(max_size=12))
def test_mutated_well_framed_messages_are_answered(mongodb_uri: str, message: bytes,
                                                   flips: list[tuple[int, int]], cut: int,
                                                   extra: bytes) -> None:
    """Bytes flipped, cut or appended after the header, length fixed up: the message is
    well framed, so it is answered (or, with moreToCome, not) and the connection stays."""
    _, request_id, _, op_code = HEADER.unpack_from(message)
    payload = bytearray(message[HEADER.size:])
    for position, value in flips:
        payload[position % len(payload)] = value
    payload = payload[:len(payload) - cut] + extra
    if op_code == OP_MSG and payload and payload[0] & 2:
        payload[0] &= ~2  # moreToCome would (correctly) suppress the reply we check for
    replies = answer_then_ping(mongodb_uri, frame(bytes(payload), op_code, request_id))
    assert len(replies) == 1
    doc = replies[0].doc
    assert "ok" in doc
    if not doc["ok"]:
        assert doc.get("code") != 1 and doc.get("errmsg"), doc


def nested(depth: int, leaf: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": leaf}
    for _ in range(depth):
        doc = {"a": doc}
    return doc


def raw_string_element(name: bytes, data: bytes) -> bytes:
    """A BSON string element whose bytes need not be valid UTF-8."""
    return b"\x02" + name + b"\x00" + struct.pack("<i", len(data) + 1) + data + b"\x00"


def raw_document(*elements: bytes) -> bytes:
    content = b"".join(elements)
    return struct.pack("<i", 4 + len(content) + 1) + content + b"\x00"


bson_edge_documents = st.one_of(
    st.builds(nested, st.integers(0, 400), st.just(1)),
    st.builds(lambda n: {"s": "x" * n}, st.integers(0, 1_000_000)),
    st.builds(lambda k: {k: 1}, st.text(max_size=30).filter(lambda k: "\x00" not in k)),
)


@FUZZ_SETTINGS
@given(doc=bson_edge_documents, command=st.sampled_from(["insert", "find", "ping"]))
def test_bson_edge_cases_are_answered(mongodb_uri: str, doc: dict[str, Any],
                                      command: str) -> None:
    """Deep nesting, huge strings and odd keys in a command's documents: always a reply."""
    if command == "insert":
        request = {"insert": "edge", "documents": [doc], "$db": "wire_hostile_fuzz"}
    elif command == "find":
        request = {"find": "edge", "filter": doc, "$db": "wire_hostile_fuzz"}
    else:
        request = {"ping": 1, "comment": doc, "$db": "admin"}
    replies = answer_then_ping(mongodb_uri, frame(msg_payload(body(request))))
    assert replies[0].doc.get("code") != 1, replies[0].doc


@FUZZ_SETTINGS
@given(data=st.binary(min_size=1, max_size=40), type_byte=st.integers(0, 255))
def test_invalid_utf8_and_bad_types_get_invalid_bson(mongodb_uri: str, data: bytes,
                                                     type_byte: int) -> None:
    """Invalid UTF-8 in a string, or an element of an unknown type: InvalidBSON (22) or a
    reply, never a dropped connection."""
    element = raw_string_element(b"s", data)
    odd = bytes([type_byte]) + b"t\x00" + data
    command = raw_document(raw_string_element(b"ping", b"1"), element, odd,
                           raw_string_element(b"$db", b"admin"))
    replies = answer_then_ping(mongodb_uri, frame(msg_payload(b"\x00" + command)))
    assert replies[0].doc.get("code") != 1, replies[0].doc
