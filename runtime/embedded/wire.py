"""MongoDB wire protocol framing: OP_MSG, the legacy OP_QUERY handshake and OP_REPLY.

Only framing lives here; what a command means is decided by :mod:`runtime.embedded.state`.
Broken framing (a length that is out of range or does not match the bytes) is a
:class:`ProtocolViolation` and closes the connection; anything wrong inside a well-framed
message is a :class:`BadRequest`, answered with an error reply.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions

from runtime.embedded.crc32c import crc32c
from runtime.embedded.errors import ErrorCode

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
_FLAGS = struct.Struct("<I")
MAX_MESSAGE_SIZE = 48_000_000
MAX_BSON_SIZE = 16 * 1024 * 1024

#: Opcodes removed in MongoDB 6.0 (OP_UPDATE .. OP_KILL_CURSORS), refused like mongod does.
LEGACY_OP_CODES = frozenset(range(2001, 2008))

FLAG_CHECKSUM_PRESENT = 1 << 0
FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16
_KNOWN_REQUIRED_FLAGS = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME

# tz_aware=False keeps datetimes naive UTC exactly as PyMongo sends them; documents keep the
# order of their keys (dict) as BSON requires.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=False, uuid_representation=4)


LEGACY_REMOVED_MESSAGE = ("{} is no longer supported. The client driver may require an upgrade. "
                          "For more details see "
                          "https://dochub.mongodb.org/core/legacy-opcode-removal")


class ProtocolViolation(Exception):
    """The bytes on a connection are not a valid message; the connection is closed."""


class BadRequest(Exception):
    """A well-framed message whose content is invalid; answered with an error reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Header:
    """The 16-byte header every message starts with."""

    length: int
    request_id: int
    response_to: int
    op_code: int


@dataclass(slots=True)
class Request:
    """A decoded command request."""

    request_id: int
    op_code: int
    body: dict[str, Any]
    more_to_come: bool = False
    exhaust_allowed: bool = False
    sequences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def parse_header(data: bytes) -> Header:
    """Decode and sanity-check a message header."""
    length, request_id, response_to, op_code = HEADER.unpack(data)
    if length < HEADER.size or length > MAX_MESSAGE_SIZE:
        raise ProtocolViolation(f"message length {length} out of range")
    return Header(length, request_id, response_to, op_code)


def _decode_document(data: bytes, offset: int, limit: int) -> tuple[dict[str, Any], int]:
    """Decode the document at ``offset``, which must end by ``limit`` (no copy of ``data``)."""
    if offset + 4 > limit:
        raise BadRequest(ErrorCode.ProtocolError, "truncated BSON document")
    (size,) = struct.unpack_from("<i", data, offset)
    if size < 5 or offset + size > limit:
        raise BadRequest(ErrorCode.ProtocolError, "BSON document length out of range")
    try:
        # (a view, not a slice: the decoder reads the bytes in place)
        doc = bson.decode(memoryview(data)[offset : offset + size], CODEC)
    except Exception as exc:  # bson raises several unrelated exception types
        raise BadRequest(ErrorCode.InvalidBSON, f"invalid BSON: {exc}") from exc
    return doc, offset + size


def parse_op_msg(header: Header, payload: bytes) -> Request:
    """Decode an OP_MSG body (everything after the header)."""
    if len(payload) < 5:
        raise BadRequest(ErrorCode.ProtocolError, "OP_MSG too short")
    (flags,) = struct.unpack_from("<I", payload, 0)
    if flags & 0xFFFF & ~_KNOWN_REQUIRED_FLAGS:
        raise BadRequest(ErrorCode.IllegalOpMsgFlag,
                         f"unknown required OP_MSG flag bits {flags:#x}")
    end = len(payload) - (4 if flags & FLAG_CHECKSUM_PRESENT else 0)
    if end < 5:
        raise BadRequest(ErrorCode.ProtocolError, "OP_MSG too short for its checksum")
    body: dict[str, Any] | None = None
    offset = 4
    if payload[4] == 0:
        # Most messages are a body section alone (the section loop is for the others).
        body, offset = _decode_document(payload, 5, end)
        if offset == end:
            return Request(header.request_id, OP_MSG, body, bool(flags & FLAG_MORE_TO_COME),
                           bool(flags & FLAG_EXHAUST_ALLOWED))
    sequences: dict[str, list[dict[str, Any]]] = {}
    while offset < end:
        kind = payload[offset]
        offset += 1
        if kind == 0:
            if body is not None:
                raise BadRequest(ErrorCode.Location40430, "OP_MSG has more than one body section")
            body, offset = _decode_document(payload, offset, end)
        elif kind == 1:
            if offset + 4 > end:
                raise BadRequest(ErrorCode.ProtocolError, "truncated document sequence")
            (size,) = struct.unpack_from("<i", payload, offset)
            seq_end = offset + size
            if size < 5 or seq_end > end:
                raise BadRequest(ErrorCode.ProtocolError, "document sequence length out of range")
            name_end = payload.find(b"\x00", offset + 4, seq_end)
            if name_end < 0:
                raise BadRequest(ErrorCode.ProtocolError,
                                 "document sequence identifier not terminated")
            try:
                name = payload[offset + 4 : name_end].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(ErrorCode.ProtocolError, "document sequence identifier is not "
                                 "valid UTF-8") from None
            if name in sequences:
                raise BadRequest(ErrorCode.Location40431,
                                 f"duplicate document sequence {name!r}")
            docs: list[dict[str, Any]] = []
            pos = name_end + 1
            while pos < seq_end:
                doc, pos = _decode_document(payload, pos, seq_end)
                docs.append(doc)
            sequences[name] = docs
            offset = seq_end
        else:
            raise BadRequest(ErrorCode.Location40432, f"unknown OP_MSG section kind {kind}")
    if body is None:
        raise BadRequest(ErrorCode.Location40587, "OP_MSG has no body section")
    for name, docs in sequences.items():
        if name in body:
            raise BadRequest(ErrorCode.Location40433,
                             f"duplicate field {name!r} in body and document sequence")
        body[name] = docs
    return Request(
        request_id=header.request_id,
        op_code=OP_MSG,
        body=body,
        more_to_come=bool(flags & FLAG_MORE_TO_COME),
        exhaust_allowed=bool(flags & FLAG_EXHAUST_ALLOWED),
        sequences=sequences,
    )


def checksum_flagged(payload: bytes) -> bool:
    """Whether an OP_MSG payload says it ends with a CRC-32C checksum."""
    return len(payload) >= 4 and bool(payload[0] & FLAG_CHECKSUM_PRESENT)


def verify_checksum(header: Header, payload: bytes) -> None:
    """Check an OP_MSG's CRC-32C trailer (over the header and everything before the trailer);
    ChecksumMismatch (282) as on mongod if it does not match."""
    if len(payload) < 8:
        raise BadRequest(ErrorCode.ProtocolError, "OP_MSG too short for its checksum")
    raw_header = HEADER.pack(header.length, header.request_id, header.response_to,
                             header.op_code)
    (expected,) = struct.unpack_from("<I", payload, len(payload) - 4)
    body = memoryview(payload)[:-4]
    if crc32c(body, crc32c(raw_header)) != expected:
        raise BadRequest(ErrorCode.ChecksumMismatch, "OP_MSG checksum does not match contents")


def parse_op_query(header: Header, payload: bytes) -> tuple[str, Request]:
    """Decode a legacy OP_QUERY; returns the full collection name and the command."""
    if len(payload) < 4:
        raise BadRequest(ErrorCode.ProtocolError, "OP_QUERY too short")
    name_end = payload.find(b"\x00", 4)
    if name_end < 0:
        raise BadRequest(ErrorCode.ProtocolError, "OP_QUERY collection name not terminated")
    full_name = payload[4:name_end].decode("utf-8", "replace")
    offset = name_end + 1 + 8  # numberToSkip, numberToReturn
    query, _ = _decode_document(payload, offset, len(payload))
    if "$query" in query:
        wrapped = query["$query"]
        if not isinstance(wrapped, dict):
            raise BadRequest(ErrorCode.Location10065, "invalid parameter: expected an object "
                             "($query)")
        query = dict(wrapped)
    if "$db" not in query:
        query["$db"] = full_name.split(".", 1)[0]
    return full_name, Request(request_id=header.request_id, op_code=OP_QUERY, body=query)


def encode_op_msg(response_to: int, request_id: int, doc: dict[str, Any],
                  flags: int = 0) -> bytes:
    """Encode a single-section OP_MSG reply (``flags``: e.g. moreToCome in an exhaust stream)."""
    body = bson.encode(doc, False, CODEC)
    return b"".join((HEADER.pack(HEADER.size + 5 + len(body), request_id, response_to, OP_MSG),
                     _FLAGS.pack(flags), b"\x00", body))


def encode_op_reply(response_to: int, request_id: int, doc: dict[str, Any],
                    query_failure: bool = False) -> bytes:
    """Encode a legacy OP_REPLY carrying one document (handshake over OP_QUERY);
    ``query_failure`` sets the QueryFailure flag (``$err`` replies)."""
    body = bson.encode(doc, codec_options=CODEC)
    flags = 8 | (2 if query_failure else 0)  # AwaitCapable, QueryFailure
    payload = struct.pack("<iqii", flags, 0, 0, 1) + body
    return HEADER.pack(HEADER.size + len(payload), request_id, response_to, OP_REPLY) + payload


# The last document sized by :func:`encoded_size` (a write checks the new document's size and
# the change log then accounts for the same document: it is encoded once).
_last_sized: list[Any] = [None, 0]


def encoded_size(doc: dict[str, Any]) -> int:
    """The BSON size of ``doc`` (stored documents are never changed, so the size of the one
    sized last is remembered)."""
    if _last_sized[0] is not doc:
        _last_sized[0] = doc
        _last_sized[1] = len(bson.encode(doc, codec_options=CODEC))
    size: int = _last_sized[1]
    return size
