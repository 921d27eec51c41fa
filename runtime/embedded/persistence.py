"""Durability with ``--dbpath``: a write-ahead log of committed units plus a snapshot.

Every acknowledged command (or committed transaction) is one record, written to the log file
before the reply is sent, so an acknowledged write survives SIGKILL of the server. Each record
holds the storage operations and the change-log entries of that unit, which is why change streams
resume after a restart from tokens issued before it. Records are framed as
``<length:int32><crc32:uint32><BSON>``; a torn record at the tail (the process died mid-write) is
detected by its length or checksum and cut off at start-up. At start-up, and at a clean shutdown,
the state is rewritten as a snapshot and the log truncated.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson

from runtime.embedded.wire import CODEC

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<iI")
SNAPSHOT_NAME = "snapshot.bson"
WAL_NAME = "wal.log"
LOCK_NAME = "mongod.lock"


def _frame(doc: dict[str, Any]) -> bytes:
    body = bson.encode(doc, codec_options=CODEC)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _read_frames(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Decode all complete records; returns them and the byte offset where valid data ends."""
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records, 0
    data = path.read_bytes()
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        end = start + length
        if length <= 0 or end > len(data) or zlib.crc32(data[start:end]) != crc:
            log.warning("ignoring torn record at byte %d of %s", offset, path)
            break
        records.append(bson.decode(data[start:end], codec_options=CODEC))
        offset = end
    return records, offset


class Persistence:
    """Appends commit records to the log and manages the snapshot in one data directory."""

    def __init__(self, dbpath: Path, fsync: bool) -> None:
        self.dbpath = dbpath
        self.fsync = fsync
        dbpath.mkdir(parents=True, exist_ok=True)
        self._wal_path = dbpath / WAL_NAME
        self._fd: int | None = None
        self.wal_bytes = 0

    def load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The records of the last snapshot and the log records written after it."""
        snapshot, _ = _read_frames(self.dbpath / SNAPSHOT_NAME)
        records, valid_end = _read_frames(self._wal_path)
        if self._wal_path.exists() and valid_end < self._wal_path.stat().st_size:
            with self._wal_path.open("r+b") as handle:
                handle.truncate(valid_end)
        return snapshot, records

    def open(self) -> None:
        """Open the log for appending."""
        self._fd = os.open(self._wal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.wal_bytes = os.fstat(self._fd).st_size

    def append(self, record: dict[str, Any]) -> None:
        """Write one commit record; returns once the OS has it (and the disk, with fsync)."""
        if self._fd is None:
            raise RuntimeError("persistence log is not open")
        frame = _frame(record)
        view = memoryview(frame)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)
        self.wal_bytes += len(frame)

    def write_snapshot(self, state: Iterator[dict[str, Any]]) -> None:
        """Atomically replace the snapshot with the records of ``state`` and empty the log."""
        tmp = self.dbpath / (SNAPSHOT_NAME + ".tmp")
        with tmp.open("wb") as handle:
            for record in state:
                handle.write(_frame(record))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.dbpath / SNAPSHOT_NAME)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with self._wal_path.open("wb") as handle:
            handle.flush()
        self.open()

    def close(self) -> None:
        """Close the log file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
