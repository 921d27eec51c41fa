"""Long-run wire fuzzer for the embedded server (issue 10).

Starts a fresh ``runtime db --dbpath <tmp>`` and sends it a mix of

* broken framing (a length field out of range or longer than the bytes sent): the server may
  close the connection, nothing else is expected;
* well-framed malformed messages: random payloads under random opcodes, valid OP_MSG/OP_QUERY
  messages with bytes flipped, cut or appended (length fixed up), documents with invalid
  UTF-8, unknown element types, deep nesting;
* valid commands with fields replaced by values of other BSON types.

Each well-framed message is followed by a ``ping`` on the same connection, so the fuzzer knows
whether the message was answered. Between fuzz messages it performs acknowledged inserts with
known ids on a connection of its own; every ``--restart-every`` messages (and at the end) it
SIGKILLs the server, restarts it on the same data folder and checks every acknowledged write is
there. It prints one table; every count but the totals must be zero::

    python bench/fuzz_wire.py --messages 20000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import datetime
import math
import random
import re
import socket
import struct
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
from bson import ObjectId, Regex
from bson.binary import Binary
from bson.code import Code
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.embedded.process import EmbeddedServer

HEADER = struct.Struct("<iiii")
OP_QUERY, OP_MSG = 2004, 2013
PING_ID = 0x7FFF_0001
CODEC = bson.CodecOptions(uuid_representation=4)
ACKED_DB, ACKED_COLL = "acked", "writes"
FUZZ_DB = "fuzz"

TEMPLATES: list[dict[str, Any]] = [
    {"insert": "c", "documents": [{"_id": 1, "a": [1, {"b": "c"}]}], "ordered": True},
    {"update": "c", "updates": [{"q": {"a": 1}, "u": {"$set": {"b": 1}}, "multi": True,
                                 "upsert": False}]},
    {"update": "c", "updates": [{"q": {}, "u": [{"$set": {"x": "$a"}}]}]},
    {"delete": "c", "deletes": [{"q": {"a": 7}, "limit": 1}]},
    {"find": "c", "filter": {"a": {"$gt": 1}}, "sort": {"a": 1}, "projection": {"a": 1},
     "skip": 1, "limit": 5, "batchSize": 2, "singleBatch": False},
    {"getMore": Int64(1001), "collection": "c", "batchSize": 1},
    {"killCursors": "c", "cursors": [Int64(1001)]},
    {"findAndModify": "c", "query": {"a": 1}, "update": {"$inc": {"n": 1}}, "new": True,
     "upsert": True, "sort": {"a": 1}},
    {"count": "c", "query": {"a": 1}, "limit": 3, "skip": 0},
    {"distinct": "c", "key": "a", "query": {}},
    {"aggregate": "c", "pipeline": [{"$match": {"a": 1}}, {"$group": {"_id": "$a"}}],
     "cursor": {"batchSize": 1}},
    {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}},
    {"explain": {"find": "c", "filter": {"a": 1}}, "verbosity": "executionStats"},
    {"create": "made"},
    {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
    {"listIndexes": "c", "cursor": {}},
    {"listCollections": 1, "filter": {"name": "c"}, "cursor": {}},
    {"drop": "made"},
    {"hello": 1},
    {"ping": 1, "maxTimeMS": 100},
    {"insert": "c", "documents": [{"_id": 9}], "lsid": {"id": uuid.uuid4()},
     "txnNumber": Int64(1)},
    {"find": "c", "lsid": {"id": uuid.uuid4()}, "txnNumber": Int64(1), "autocommit": False,
     "startTransaction": True},
    {"commitTransaction": 1, "lsid": {"id": uuid.uuid4()}, "txnNumber": Int64(1),
     "autocommit": False, "$db": "admin"},
]

SCALARS: list[Any] = [
    0, 1, -1, 5, 2**31 - 1, -(2**31), Int64(2**63 - 1), Int64(-(2**63)), 1.5, -0.0,
    math.nan, math.inf, -math.inf, "", "x", "$a", "a.b", "\u00e9", None, True, False,
    b"", b"\x00\x01", Binary(b"x", 5), uuid.uuid4(), ObjectId(), datetime.datetime(2024, 1, 1),
    Regex("^a", "i"), re.compile("x"), Timestamp(1, 1), Decimal128("NaN"),
    Decimal128("-Infinity"), Decimal128("1E+6000"), Decimal128("2.5"), MinKey(), MaxKey(),
    Code("x"), Code("x", {"a": 1}), [], {}, [5], ["a"], [{}], {"$x": 1}, {"a": {"$regex": 5}},
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A BSON value of any type (sometimes a small array or document of them)."""
    roll = rng.random()
    if depth < 3 and roll < 0.1:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 3 and roll < 0.2:
        keys = ["a", "$eq", "$gt", "$let", "b.c", "", "_id", "$in", "$size", "$set"]
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return rng.choice(SCALARS)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    items: Any = doc.items() if isinstance(doc, dict) else enumerate(doc) \
        if isinstance(doc, list) else ()
    for key, value in items:
        if key != "$db":
            found.append((*prefix, key))
            found.extend(paths(value, (*prefix, key)))
    return found


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: replaced(v, rest, value) if k == head else v for k, v in doc.items()}
    return [replaced(v, rest, value) if i == head else v for i, v in enumerate(doc)]


def wrong_types(rng: random.Random) -> dict[str, Any]:
    command = dict(rng.choice(TEMPLATES))
    for _ in range(rng.randrange(1, 3)):
        candidates = paths(command)
        if candidates:
            command = replaced(command, rng.choice(candidates), random_value(rng))
    command.setdefault("$db", FUZZ_DB)
    return command


def frame(payload: bytes, op_code: int, request_id: int) -> bytes:
    return HEADER.pack(HEADER.size + len(payload), request_id, 0, op_code) + payload


def op_msg_payload(doc: dict[str, Any]) -> bytes:
    return b"\x00\x00\x00\x00\x00" + bson.encode(doc, codec_options=CODEC)


def op_query_payload(doc: dict[str, Any], namespace: str = "admin.$cmd") -> bytes:
    return (b"\x00" * 4 + namespace.encode() + b"\x00" + struct.pack("<ii", 0, -1)
            + bson.encode(doc, codec_options=CODEC))


def nested_bson(depth: int) -> bytes:
    doc = b"\x05\x00\x00\x00\x00"
    for _ in range(depth):
        element = b"\x03a\x00" + doc
        doc = struct.pack("<i", len(element) + 5) + element + b"\x00"
    return doc


def raw_command(extra: bytes) -> bytes:
    content = b"\x02ping\x00\x02\x00\x00\x001\x00" + extra + b"\x02$db\x00\x06\x00\x00\x00admin\x00"
    return struct.pack("<i", len(content) + 5) + content + b"\x00"


@dataclass
class Message:
    """One fuzz message: its bytes, whether its framing is intact, and what it was."""

    data: bytes
    well_framed: bool
    kind: str
    command: str = "-"


def generate(rng: random.Random, request_id: int) -> Message:
    roll = rng.random()
    if roll < 0.05:  # broken framing
        length = rng.choice([0, 3, 15, -5, 48_000_001, 2**31 - 1, 200])
        data = HEADER.pack(length, request_id, 0, OP_MSG) + rng.randbytes(rng.randrange(0, 40))
        return Message(data, False, "broken framing")
    if roll < 0.45:
        command = wrong_types(rng)
        name = str(next(iter(command)))
        return Message(frame(op_msg_payload(command), OP_MSG, request_id), True, "wrong types",
                       name)
    if roll < 0.75:  # a valid message mutated inside its frame
        command = dict(rng.choice(TEMPLATES))
        command.setdefault("$db", FUZZ_DB)
        if rng.random() < 0.15:
            payload, op_code = op_query_payload({"$query": command}), OP_QUERY
        else:
            payload, op_code = op_msg_payload(command), OP_MSG
        mutated = bytearray(payload)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if rng.random() < 0.2:
            mutated = mutated[: rng.randrange(len(mutated))]
        if rng.random() < 0.2:
            mutated += rng.randbytes(rng.randrange(1, 20))
        if op_code == OP_MSG and mutated:
            mutated[0] &= ~2  # moreToCome: no reply, which is correct but not checkable here
        return Message(frame(bytes(mutated), op_code, request_id), True, "mutated",
                       str(next(iter(command))))
    if roll < 0.85:  # random payload, random opcode
        op_code = rng.choice([OP_MSG, OP_QUERY, 1, 2012, 2002, 2005, rng.randrange(-9, 5000)])
        payload = bytearray(rng.randbytes(rng.randrange(0, 100)))
        if op_code == OP_MSG and payload:
            payload[0] &= ~2
        return Message(frame(bytes(payload), op_code, request_id), True, "noise")
    edge = rng.choice(["utf8", "type", "nested", "huge", "op_query"])
    if edge == "utf8":
        bad = rng.randbytes(rng.randrange(1, 10)) + b"\xff"
        extra = b"\x02s\x00" + struct.pack("<i", len(bad) + 1) + bad + b"\x00"
        payload = b"\x00" * 5 + raw_command(extra)
    elif edge == "type":
        extra = bytes([rng.randrange(256)]) + b"t\x00" + rng.randbytes(rng.randrange(0, 9))
        payload = b"\x00" * 5 + raw_command(extra)
    elif edge == "nested":
        inner = nested_bson(rng.choice([50, 150, 200, 250, 900, 2000]))
        payload = b"\x00" * 5 + raw_command(b"\x03comment\x00" + inner)
    elif edge == "huge":
        # One _id: a single huge document is kept (then duplicate keys), so later multi-updates
        # do not rewrite gigabytes.
        payload = op_msg_payload({"insert": "huge", "documents": [
            {"_id": 1, "s": "x" * rng.randrange(1, 17_000_000)}], "$db": FUZZ_DB})
    else:
        payload = op_query_payload({"$query": random_value(rng)},
                                   rng.choice(["admin.$cmd", "fuzz.c", "x"]))
        return Message(frame(payload, OP_QUERY, request_id), True, "bson edge", "op_query")
    return Message(frame(payload, OP_MSG, request_id), True, "bson edge", edge)


class Connection:
    """A raw socket that reads whole replies."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def close(self) -> None:
        self.sock.close()

    def _exactly(self, n: int) -> bytes | None:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def reply(self) -> tuple[int, dict[str, Any]] | None:
        """``(response_to, document)`` of the next reply; None if the server closed."""
        header = self._exactly(HEADER.size)
        if header is None:
            return None
        length, _, response_to, op_code = HEADER.unpack(header)
        payload = self._exactly(length - HEADER.size)
        if payload is None:
            return None
        start = 5 if op_code == OP_MSG else 20
        return response_to, bson.decode(payload[start:], codec_options=CODEC)

    def command(self, doc: dict[str, Any], request_id: int) -> dict[str, Any] | None:
        self.sock.sendall(frame(op_msg_payload(doc), OP_MSG, request_id))
        got = self.reply()
        return got[1] if got is not None else None


@dataclass
class Counts:
    """What the run observed."""

    messages: int = 0
    well_framed: int = 0
    broken_framing: int = 0
    drops: int = 0
    crashes: int = 0
    hangs: int = 0
    internal_errors: int = 0
    acknowledged: int = 0
    lost: int = 0
    restarts: int = 0
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    internal: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    samples: list[str] = field(default_factory=list)


class Fuzzer:
    """Drives one server through the run."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.server = EmbeddedServer(dbpath=folder / "data", log_path=folder / "server.log")
        self.counts = Counts()
        self.acked: list[int] = []
        self.fuzz_conn: Connection | None = None
        self.write_conn: Connection | None = None

    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()
        self.fuzz_conn = None
        self.write_conn = None

    def note(self, what: str, message: Message, detail: str = "") -> None:
        if len(self.counts.samples) < 20:
            self.counts.samples.append(f"{what}: {message.kind}/{message.command} {detail} "
                                       f"{message.data[:80]!r}")

    def send(self, message: Message, request_id: int) -> None:
        counts = self.counts
        counts.messages += 1
        counts.kinds[message.kind] += 1
        if not message.well_framed:
            counts.broken_framing += 1
            conn = Connection(self.port(), self.args.hang_timeout)
            try:
                conn.sock.sendall(message.data)
                conn.sock.shutdown(socket.SHUT_WR)
                while conn.reply() is not None:
                    pass
            except OSError:
                pass
            finally:
                conn.close()
            return
        counts.well_framed += 1
        if self.fuzz_conn is None:
            self.fuzz_conn = Connection(self.port(), self.args.hang_timeout)
        conn = self.fuzz_conn
        try:
            conn.sock.sendall(message.data + frame(op_msg_payload(
                {"ping": 1, "$db": "admin"}), OP_MSG, PING_ID))
            while True:
                got = conn.reply()
                if got is None:
                    counts.drops += 1
                    self.note("drop", message)
                    self._reset_fuzz_connection()
                    return
                response_to, doc = got
                if response_to == PING_ID:
                    return
                if doc.get("code") == 1:
                    counts.internal_errors += 1
                    counts.internal[(message.command, str(doc.get("errmsg"))[:100])] += 1
        except TimeoutError:
            counts.hangs += 1
            self.note("hang", message)
            self._reset_fuzz_connection()
        except OSError as exc:
            counts.drops += 1
            self.note("drop", message, repr(exc))
            self._reset_fuzz_connection()

    def _reset_fuzz_connection(self) -> None:
        if self.fuzz_conn is not None:
            self.fuzz_conn.close()
        self.fuzz_conn = None

    def acknowledged_write(self) -> None:
        doc_id = len(self.acked) + 1_000_000 * self.counts.restarts
        if self.write_conn is None:
            self.write_conn = Connection(self.port(), self.args.hang_timeout)
        reply = self.write_conn.command({"insert": ACKED_COLL, "documents": [{"_id": doc_id}],
                                         "$db": ACKED_DB}, 1)
        if reply is not None and reply.get("ok") == 1 and reply.get("n") == 1:
            self.acked.append(doc_id)
            self.counts.acknowledged += 1

    def check_alive(self) -> None:
        if not self.server.running:
            self.counts.crashes += 1
            self.counts.samples.append(f"crash: exit status {self.server.returncode}")
            self.start()

    def kill_and_verify(self) -> None:
        self.server.kill()
        self.counts.restarts += 1
        self.start()
        conn = Connection(self.port(), 60)
        try:
            found: set[int] = set()
            reply = conn.command({"find": ACKED_COLL, "projection": {"_id": 1},
                                  "batchSize": 1_000_000, "$db": ACKED_DB}, 2)
            while reply is not None:
                cursor = reply["cursor"]
                found.update(d["_id"] for d in cursor.get("firstBatch", cursor.get("nextBatch",
                                                                                   [])))
                if not cursor["id"]:
                    break
                reply = conn.command({"getMore": cursor["id"], "collection": ACKED_COLL,
                                      "$db": ACKED_DB}, 3)
            missing = set(self.acked) - found
            self.counts.lost += len(missing)
            if missing:
                self.counts.samples.append(f"lost: {sorted(missing)[:10]}")
        finally:
            conn.close()
        self.acked = sorted(set(self.acked))

    def run(self) -> Counts:
        self.start()
        started = time.monotonic()
        try:
            for index in range(self.args.messages):
                if self.args.seconds and time.monotonic() - started > self.args.seconds:
                    break
                self.send(generate(self.rng, index + 10), index + 10)
                if index % 10 == 0:
                    self.check_alive()
                    self.acknowledged_write()
                if (index + 1) % self.args.restart_every == 0:
                    self.kill_and_verify()
            self.check_alive()
            self.kill_and_verify()
        finally:
            self.server.stop()
        self.elapsed = time.monotonic() - started
        return self.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long")
    parser.add_argument("--restart-every", type=int, default=5_000,
                        help="SIGKILL, restart and verify every N messages")
    parser.add_argument("--hang-timeout", type=float, default=30.0,
                        help="no reply within this many seconds counts as a hang")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz_wire_") as tmp:
        fuzzer = Fuzzer(args, Path(tmp))
        counts = fuzzer.run()
        log_text = (Path(tmp) / "server.log").read_text(errors="replace")
    rows = [
        ("messages", counts.messages),
        ("  well-framed", counts.well_framed),
        ("  broken framing (may close)", counts.broken_framing),
        ("connection drops on well-framed messages", counts.drops),
        ("crashes (server process died)", counts.crashes),
        (f"hangs (no reply in {args.hang_timeout:g}s)", counts.hangs),
        ("internal-error replies", counts.internal_errors),
        ("acknowledged writes", counts.acknowledged),
        ("acknowledged writes lost", counts.lost),
        ("SIGKILL restarts verified", counts.restarts),
    ]
    print(f"fuzz_wire: seed {args.seed}, {fuzzer.elapsed:.0f}s, "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.kinds.items())))
    print(f"| {'count':<44} | {'value':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|")
    for label, value in rows:
        print(f"| {label:<44} | {value:>8} |")
    for (command, errmsg), n in counts.internal.most_common():
        print(f"internal error x{n}: {command}: {errmsg}")
    for sample in counts.samples:
        print(sample)
    tracebacks = re.findall(r'File "([^"]*runtime/embedded/[^"]*)", line (\d+)', log_text)
    if counts.internal_errors and tracebacks:
        print("server log frames:", collections.Counter(tracebacks).most_common(12))
    bad = counts.drops + counts.crashes + counts.hangs + counts.internal_errors + counts.lost
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
