"""A minimal MongoDB wire-protocol client on a plain socket, for tests that need exact bytes.

PyMongo cannot send a legacy OP_QUERY, a malformed message, or a command with an ``lsid`` of
our choosing (it overwrites ``lsid`` with its own session's), so these tests speak the protocol
themselves with :mod:`socket`, :mod:`struct` and :mod:`bson`.
"""

from __future__ import annotations

import itertools
import socket
import struct
import uuid
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import bson
from bson.codec_options import CodecOptions
from bson.int64 import Int64

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013
HEADER = struct.Struct("<iiii")
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(uuid_representation=4)
_request_ids = itertools.count(1000)


def address(uri: str) -> tuple[str, int]:
    """``(host, port)`` of the first host of a ``mongodb://`` URI."""
    parts = urlsplit(uri)
    netloc = parts.netloc.split("@")[-1].split(",")[0]
    host, _, port = netloc.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 27017)


def new_lsid() -> dict[str, Any]:
    """A fresh logical session id, ``{id: UUID}`` (sent as binData subtype 4)."""
    return {"id": uuid.uuid4()}


def op_msg(body: dict[str, Any], request_id: int | None = None, flags: int = 0) -> bytes:
    """An OP_MSG request with one body section."""
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body, codec_options=CODEC)
    rid = next(_request_ids) if request_id is None else request_id
    return HEADER.pack(HEADER.size + len(payload), rid, 0, OP_MSG) + payload


def op_query(query: dict[str, Any], collection: str = "admin.$cmd",
             request_id: int | None = None) -> bytes:
    """A legacy OP_QUERY request (flags 0, skip 0, numberToReturn -1)."""
    payload = (struct.pack("<i", 0) + collection.encode() + b"\x00" + struct.pack("<ii", 0, -1)
               + bson.encode(query, codec_options=CODEC))
    rid = next(_request_ids) if request_id is None else request_id
    return HEADER.pack(HEADER.size + len(payload), rid, 0, OP_QUERY) + payload


class Reply:
    """A decoded reply: header fields plus the single document."""

    def __init__(self, length: int, request_id: int, response_to: int, op_code: int,
                 flags: int, doc: dict[str, Any], number_returned: int | None = None) -> None:
        self.length = length
        self.request_id = request_id
        self.response_to = response_to
        self.op_code = op_code
        self.flags = flags
        self.doc = doc
        self.number_returned = number_returned


class RawConnection:
    """One TCP connection to the server."""

    def __init__(self, uri: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address(uri), timeout=timeout)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exactly(self, n: int) -> bytes | None:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read_reply(self) -> Reply | None:
        """The next reply, or ``None`` if the server closed the connection."""
        try:
            header = self._read_exactly(HEADER.size)
        except ConnectionResetError:
            return None
        if header is None:
            return None
        length, request_id, response_to, op_code = HEADER.unpack(header)
        payload = self._read_exactly(length - HEADER.size)
        if payload is None:
            return None
        if op_code == OP_MSG:
            (flags,) = struct.unpack_from("<I", payload, 0)
            assert payload[4] == 0, "reply must be a single kind-0 section"
            doc = bson.decode(payload[5:], codec_options=CODEC)
            return Reply(length, request_id, response_to, op_code, flags, doc)
        if op_code == OP_REPLY:
            flags, _cursor_id, _start, number_returned = struct.unpack_from("<iqii", payload, 0)
            doc = bson.decode(payload[20:], codec_options=CODEC)
            return Reply(length, request_id, response_to, op_code, flags, doc, number_returned)
        raise AssertionError(f"unexpected reply opcode {op_code}")

    def command(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send an OP_MSG command and return the reply document."""
        request_id = next(_request_ids)
        self.send(op_msg(body, request_id))
        reply = self.read_reply()
        assert reply is not None, f"connection closed in reply to {body!r}"
        assert reply.op_code == OP_MSG and reply.response_to == request_id
        return reply.doc

    def closed_by_server(self) -> bool:
        """Half-close our side and report whether the server then closes (reading to EOF)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return True
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


class RawSession:
    """Commands on one raw connection under one ``lsid`` with explicit ``txnNumber`` values."""

    def __init__(self, conn: RawConnection, db: str) -> None:
        self.conn = conn
        self.db = db
        self.lsid = new_lsid()

    def run(self, body: dict[str, Any], txn_number: int | None = None, db: str | None = None,
            **fields: Any) -> dict[str, Any]:
        """Send ``body`` with this session's lsid (and ``txnNumber`` as an Int64)."""
        doc = dict(body)
        doc.update(fields)
        doc["lsid"] = self.lsid
        if txn_number is not None:
            doc["txnNumber"] = Int64(txn_number)
        doc["$db"] = db or self.db
        return self.conn.command(doc)

    def in_txn(self, body: dict[str, Any], txn_number: int, start: bool = False) -> dict[str, Any]:
        """A statement of transaction ``txn_number`` (``start`` opens it)."""
        fields: dict[str, Any] = {"autocommit": False}
        if start:
            fields["startTransaction"] = True
        return self.run(body, txn_number, **fields)

    def commit(self, txn_number: int) -> dict[str, Any]:
        return self.run({"commitTransaction": 1}, txn_number, db="admin", autocommit=False)

    def abort(self, txn_number: int) -> dict[str, Any]:
        return self.run({"abortTransaction": 1}, txn_number, db="admin", autocommit=False)
