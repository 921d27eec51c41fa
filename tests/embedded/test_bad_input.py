"""Bad bytes on raw sockets: each gets an error reply or a closed connection, nothing worse.

While the garbage flows, a PyMongo client keeps writing acknowledged documents on its own
connections; at the end every acknowledged document must be there and the client must work.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from pymongo import MongoClient
from pymongo.database import Database
from raw_wire import HEADER, OP_MSG, OP_QUERY, RawConnection, op_msg, op_query

FUZZ_SEED = 20240611
FUZZ_ROUNDS = 300
MAX_MESSAGE_SIZE = 48_000_000


class Writer:
    """A PyMongo client inserting acknowledged documents in a background thread."""

    def __init__(self, uri: str, db: str) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri)
        self.coll = self.client[db].acknowledged
        self.acknowledged: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="acknowledged-writer")

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                self.coll.insert_one({"_id": n, "payload": "x" * (n % 50)})
                self.acknowledged.append(n)
                n += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        assert not self.errors, f"the concurrent client failed: {self.errors[0]!r}"
        assert self.acknowledged, "the concurrent client never wrote"
        stored = {d["_id"] for d in self.coll.find({}, {"_id": 1})}
        missing = set(self.acknowledged) - stored
        assert not missing, f"acknowledged documents lost: {sorted(missing)[:10]}"
        assert self.client.admin.command("ping")["ok"] == 1


@pytest.fixture
def writer(mongodb_uri: str, db: Database[dict[str, Any]]) -> Iterator[Writer]:
    with Writer(mongodb_uri, db.name) as running:
        yield running
    try:
        running.check()
    finally:
        running.client.close()


def exchange(uri: str, data: bytes, half_close: bool = True) -> list[dict[str, Any]] | None:
    """Send ``data``; return the replies read until the server closes (None if it never
    answered and just closed). With ``half_close`` our side is shut down after sending, so a
    server waiting for the rest of a message sees end-of-file."""
    with RawConnection(uri, timeout=20) as conn:
        try:
            conn.send(data)
        except (BrokenPipeError, ConnectionResetError):
            return None
        if half_close:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return None
        replies: list[dict[str, Any]] = []
        while True:
            reply = conn.read_reply()
            if reply is None:
                return replies or None
            replies.append(reply.doc)


def assert_error_or_closed(replies: list[dict[str, Any]] | None) -> None:
    if replies is None:
        return
    for doc in replies:
        assert doc["ok"] == 0, doc
        assert isinstance(doc["code"], int) and doc["errmsg"], doc


def header(length: int, op_code: int = OP_MSG, request_id: int = 1) -> bytes:
    return HEADER.pack(length, request_id, 0, op_code)


def msg_with_body(body: bytes, flags: int = 0) -> bytes:
    payload = struct.pack("<I", flags) + b"\x00" + body
    return header(HEADER.size + len(payload)) + payload


def nested_bson(depth: int) -> bytes:
    doc = b"\x05\x00\x00\x00\x00"
    for _ in range(depth):
        element = b"\x03a\x00" + doc
        doc = struct.pack("<i", len(element) + 5) + element + b"\x00"
    return doc


PING = bson.encode({"ping": 1, "$db": "admin"})

MALFORMED_BSON = {
    "element type 0x7f": b"\x0c\x00\x00\x00\x7fa\x00\x01\x00\x00\x00\x00",
    "length larger than the section": struct.pack("<i", 500) + PING[4:],
    "length smaller than the content": struct.pack("<i", 6) + PING[4:],
    "missing terminator": PING[:-1] + b"\x01",
    "string length past the end": b"\x12\x00\x00\x00\x02ping\x00\xff\xff\x00\x00ab\x00\x00",
    "invalid utf-8 key": b"\x0c\x00\x00\x00\x10\xff\xfe\x00\x01\x00\x00\x00\x00",
    "negative length": struct.pack("<i", -10) + PING[4:],
    "deeply nested": nested_bson(5000),
}


@pytest.mark.parametrize("body", list(MALFORMED_BSON.values()), ids=list(MALFORMED_BSON))
def test_malformed_bson_gets_an_error(mongodb_uri: str, writer: Writer, body: bytes) -> None:
    assert_error_or_closed(exchange(mongodb_uri, msg_with_body(body)))


def test_malformed_bson_keeps_a_well_framed_connection_usable(mongodb_uri: str) -> None:
    with RawConnection(mongodb_uri) as conn:
        conn.send(msg_with_body(MALFORMED_BSON["element type 0x7f"]))
        reply = conn.read_reply()
        if reply is not None:  # answered with an error: the connection still works
            assert reply.doc["ok"] == 0
            assert conn.command({"ping": 1, "$db": "admin"})["ok"] == 1


BAD_OP_MSG = {
    "empty payload": header(HEADER.size),
    "flags only": header(HEADER.size + 4) + b"\x00\x00\x00\x00",
    "unknown required flag": msg_with_body(PING, flags=1 << 7),
    "unknown section kind": header(HEADER.size + 5 + len(PING)) + b"\x00" * 4 + b"\x07" + PING,
    "two body sections": header(HEADER.size + 6 + 2 * len(PING)) + b"\x00" * 4 + b"\x00" + PING
    + b"\x00" + PING,
    "only a document sequence": header(HEADER.size + 5 + 4 + 10 + len(PING)) + b"\x00" * 4
    + b"\x01" + struct.pack("<i", 4 + 10 + len(PING)) + b"documents\x00" + PING,
    "sequence length overflow": header(HEADER.size + 5 + len(PING) + 1 + 4 + 2) + b"\x00" * 4
    + b"\x00" + PING + b"\x01" + struct.pack("<i", 1 << 20) + b"x\x00",
    "checksum flag without checksum": msg_with_body(PING, flags=1),
    "body missing $db": msg_with_body(bson.encode({"ping": 1})),
    "empty command": msg_with_body(bson.encode({})),
    "unknown command": msg_with_body(bson.encode({"noSuchCommand": 1, "$db": "admin"})),
    "wrong types": msg_with_body(bson.encode({"insert": 5, "documents": "no", "$db": "x"})),
    "lsid not a uuid": msg_with_body(bson.encode({"ping": 1, "$db": "admin",
                                                  "lsid": {"id": "nope"}})),
    "txnNumber not a number": msg_with_body(bson.encode({
        "insert": "c", "documents": [], "txnNumber": "1", "$db": "fuzz_bad_input"})),
}


@pytest.mark.parametrize("data", list(BAD_OP_MSG.values()), ids=list(BAD_OP_MSG))
def test_bad_op_msg(mongodb_uri: str, writer: Writer, data: bytes) -> None:
    assert_error_or_closed(exchange(mongodb_uri, data))


BAD_FRAMES = {
    "length below the header size": header(4),
    "zero length": header(0),
    "negative length": header(-1),
    "oversized length": header(MAX_MESSAGE_SIZE + 1),
    "huge length": header(0x7FFFFFFF),
    "unknown opcode": header(HEADER.size + 4, op_code=9999) + b"\x00" * 4,
    "OP_REPLY from a client": header(HEADER.size + 20 + len(PING), op_code=1)
    + struct.pack("<iqii", 0, 0, 0, 1) + PING,
    "OP_COMPRESSED": header(HEADER.size + 9 + len(PING), op_code=2012)
    + struct.pack("<iiB", OP_MSG, len(PING) + 5, 0) + PING,
    "legacy OP_INSERT": header(HEADER.size + 4 + 8 + len(PING), op_code=2002)
    + b"\x00" * 4 + b"admin.x\x00" + PING,
}


@pytest.mark.parametrize("data", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_bad_framing(mongodb_uri: str, writer: Writer, data: bytes) -> None:
    assert_error_or_closed(exchange(mongodb_uri, data))


@pytest.mark.parametrize("length", [MAX_MESSAGE_SIZE + 1, 0x7FFFFFFF, 3, -100])
def test_out_of_range_length_closes_without_waiting(mongodb_uri: str, length: int) -> None:
    """The server closes on its own (no half-close from us) rather than reading on."""
    assert exchange(mongodb_uri, header(length), half_close=False) is None


TRUNCATED = {
    "header only": op_msg({"ping": 1, "$db": "admin"})[:HEADER.size],
    "half a header": op_msg({"ping": 1, "$db": "admin"})[:7],
    "body cut short": op_msg({"ping": 1, "$db": "admin"})[:-5],
    "length claims more": header(1000) + b"\x00" * 4 + b"\x00" + PING,
    "OP_QUERY cut short": op_query({"isMaster": 1})[:-3],
}


@pytest.mark.parametrize("data", list(TRUNCATED.values()), ids=list(TRUNCATED))
def test_truncated_messages(mongodb_uri: str, writer: Writer, data: bytes) -> None:
    assert_error_or_closed(exchange(mongodb_uri, data))


BAD_OP_QUERY = {
    "name not terminated": header(HEADER.size + 10, op_code=OP_QUERY) + b"\x00" * 4
    + b"admin.",
    "no document": header(HEADER.size + 4 + 11 + 8, op_code=OP_QUERY) + b"\x00" * 4
    + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1),
    "bad document": header(HEADER.size + 4 + 11 + 8 + 12, op_code=OP_QUERY) + b"\x00" * 4
    + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + MALFORMED_BSON["element type 0x7f"],
    "empty query": op_query({}),
    "$query wrapper that is not a document": op_query({"$query": 5}),
}


@pytest.mark.parametrize("data", list(BAD_OP_QUERY.values()), ids=list(BAD_OP_QUERY))
def test_bad_op_query(mongodb_uri: str, writer: Writer, data: bytes) -> None:
    assert_error_or_closed(exchange(mongodb_uri, data))


def _mutations(rng: random.Random, db_name: str) -> Iterator[tuple[str, bytes]]:
    """Random inputs: pure noise, a valid header with noise, and valid messages with flipped
    bytes, cut short or with bytes appended."""
    valid = [
        op_msg({"insert": "fuzz", "documents": [{"_id": 1, "a": [1, {"b": "c"}]}],
                "$db": db_name}),
        op_msg({"find": "fuzz", "filter": {"a": {"$gt": 1}}, "$db": db_name}),
        op_msg({"update": "fuzz", "updates": [{"q": {}, "u": {"$set": {"x": 1}}}],
                "$db": db_name}),
        op_msg({"hello": 1, "$db": "admin"}),
        op_query({"isMaster": 1, "helloOk": True}),
    ]
    for _ in range(FUZZ_ROUNDS):
        kind = rng.randrange(5)
        if kind == 0:
            yield "noise", rng.randbytes(rng.randrange(1, 200))
        elif kind == 1:
            payload = rng.randbytes(rng.randrange(0, 120))
            op = rng.choice([OP_MSG, OP_QUERY, 1, 2012, rng.randrange(-5, 3000)])
            yield "header+noise", header(HEADER.size + len(payload), op) + payload
        elif kind == 2:
            flipped = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 6)):
                position = rng.randrange(len(flipped))
                flipped[position] = rng.randrange(256)
            yield "flipped", bytes(flipped)
        elif kind == 3:
            message = rng.choice(valid)
            yield "cut", message[: rng.randrange(len(message))]
        else:
            message = rng.choice(valid)
            yield "appended", message + rng.randbytes(rng.randrange(1, 40))


def test_random_bytes(mongodb_uri: str, writer: Writer, db: Database[dict[str, Any]]) -> None:
    rng = random.Random(FUZZ_SEED)
    db_name = f"{db.name}_fuzz"
    outcomes = {"closed": 0, "replied": 0}
    try:
        for index, (kind, data) in enumerate(_mutations(rng, db_name)):
            replies = exchange(mongodb_uri, data)
            outcomes["closed" if replies is None else "replied"] += 1
            for doc in replies or []:
                assert isinstance(doc, dict) and "ok" in doc, (index, kind, doc)
                if not doc["ok"]:
                    assert doc.get("errmsg"), (index, kind, doc)
            if index % 25 == 0:
                assert writer.client.admin.command("ping")["ok"] == 1
    finally:
        writer.client.drop_database(db_name)
    assert outcomes["closed"] and outcomes["replied"]


def test_slow_and_interleaved_clients(mongodb_uri: str, writer: Writer) -> None:
    """A connection stalled half-way through a message does not hold up anyone else."""
    stalled = RawConnection(mongodb_uri)
    try:
        stalled.send(op_msg({"ping": 1, "$db": "admin"})[:10])
        with RawConnection(mongodb_uri) as other:
            for _ in range(20):
                assert other.command({"ping": 1, "$db": "admin"})["ok"] == 1
        assert writer.client.admin.command("ping")["ok"] == 1
    finally:
        stalled.close()


def test_many_garbage_connections_at_once(mongodb_uri: str, writer: Writer) -> None:
    rng = random.Random(FUZZ_SEED + 1)
    connections = [RawConnection(mongodb_uri) for _ in range(30)]
    try:
        for conn in connections:
            conn.send(rng.randbytes(rng.randrange(16, 64)))
        for conn in connections:
            conn.sock.shutdown(socket.SHUT_WR)
        for conn in connections:
            while True:
                reply = conn.read_reply()
                if reply is None:
                    break
                assert reply.doc["ok"] == 0
    finally:
        for conn in connections:
            conn.close()
    assert writer.client.admin.command("ping")["ok"] == 1
