"""Durability with ``--dbpath``: a write-ahead log of committed units plus a snapshot.

Every acknowledged command (or committed transaction) is one record, written to the log before
the reply is sent, so an acknowledged write survives SIGKILL of the server. Each record holds the
storage operations and the change-log entries of that unit, which is why change streams resume
after a restart from tokens issued before it. Records are framed as
``<length:int32><crc32:uint32><BSON>``.

The log is a sequence of segment files ``wal.<n>.log``; only the last one is appended to. A
checkpoint captures the state at cluster time ``T`` (in the event loop, cheaply: documents are
immutable), switches the log to a new segment, writes the snapshot (possibly in another thread),
atomically renames it into place, and only then deletes the older segments. Start-up loads the
snapshot and replays every logged record later than its time ``T``, so a crash at any point of a
checkpoint loses nothing and applies nothing twice.

A torn record at the tail of the last segment (the process died mid-write) is detected by its
length or checksum and cut off at start-up. Damage anywhere else (a snapshot that does not
decode, a bad record followed by more data in an older segment) is not a crash artefact: the
server then refuses to start rather than silently dropping acknowledged data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import bson

from runtime.embedded.wire import CODEC

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<iI")
MAX_FRAME_BYTES = 2**31 - 1
SNAPSHOT_NAME = "snapshot.bson"
LEGACY_WAL_NAME = "wal.log"
LOCK_NAME = "mongod.lock"
_SEGMENT = re.compile(r"^wal\.(\d{8})\.log$")


class DataDirError(Exception):
    """The data directory cannot be used (locked, unreadable, damaged); the server won't start."""


def segment_name(number: int) -> str:
    """File name of log segment ``number``."""
    return f"wal.{number:08d}.log"


def _encode(record: dict[str, Any]) -> bytes:
    return bson.encode(record, codec_options=CODEC)


def _frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"record of {len(body)} bytes is too large to log")
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _split_encode(record: dict[str, Any]) -> Iterator[bytes]:
    """Encode a snapshot record, splitting its list payload when one frame would be too big."""
    body = _encode(record)
    if len(body) <= MAX_FRAME_BYTES:
        yield body
        return
    for name in ("docs", "entries"):
        items = record.get(name)
        if isinstance(items, list) and len(items) > 1:
            half = len(items) // 2
            parts = [{**record, name: items[:half]}, {**record, name: items[half:]}]
            sizes = record.get("sizes")
            if isinstance(sizes, list):
                parts[0]["sizes"], parts[1]["sizes"] = sizes[:half], sizes[half:]
            for part in parts:
                yield from _split_encode(part)
            return
    raise ValueError(f"snapshot record of {len(body)} bytes is too large")


class _Damage(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _iter_frames(handle: IO[bytes], size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Decode the records of a ``size``-byte file one by one; yields ``(end offset, record)``.

    Raises :class:`_Damage` at the first record that is incomplete or corrupt.
    """
    offset = 0
    while True:
        header = handle.read(_FRAME.size)
        if not header:
            return
        if len(header) < _FRAME.size:
            raise _Damage(offset, "truncated record header")
        length, crc = _FRAME.unpack(header)
        if length < 5:
            raise _Damage(offset, f"invalid record length {length}")
        if offset + _FRAME.size + length > size:  # (don't allocate what a torn header claims)
            raise _Damage(offset, "truncated record")
        body = handle.read(length)
        if len(body) < length:
            raise _Damage(offset, "truncated record")
        if zlib.crc32(body) != crc:
            raise _Damage(offset, "checksum mismatch")
        try:
            record = bson.decode(body, codec_options=CODEC)
        except Exception as exc:  # bson raises several unrelated exception types
            raise _Damage(offset, f"undecodable record: {exc}") from exc
        offset += _FRAME.size + length
        yield offset, record


class Persistence:
    """Appends commit records to the log and manages the snapshot in one data directory.

    Creating it locks the directory (``mongod.lock``) against a second server; the lock goes
    with the process, so a killed server never leaves a stale one behind.
    """

    def __init__(self, dbpath: Path, fsync: bool) -> None:
        self.dbpath = dbpath
        self.fsync = fsync
        if dbpath.exists() and not dbpath.is_dir():
            raise DataDirError(f"--dbpath {dbpath} exists and is not a directory")
        try:
            dbpath.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot create --dbpath {dbpath}: "
                               f"{exc.strerror or exc}") from exc
        self._lock_fd = self._lock()
        # Left by a checkpoint that died before renaming it into place.
        (dbpath / (SNAPSHOT_NAME + ".tmp")).unlink(missing_ok=True)
        self._fd: int | None = None
        self._segment = 0
        #: Bytes in all log segments (what start-up would have to replay).
        self.wal_bytes = 0
        #: Size of the last snapshot written or loaded.
        self.snapshot_bytes = 0

    # -- directory ----------------------------------------------------------------------------

    def _lock(self) -> int:
        path = self.dbpath / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirError(f"cannot write to --dbpath {self.dbpath}: "
                               f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirError(f"--dbpath {self.dbpath} is in use by another running server "
                                   f"({path} is locked)") from exc
            raise DataDirError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _segments(self) -> list[tuple[int, Path]]:
        found: list[tuple[int, Path]] = []
        for path in self.dbpath.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
            elif path.name == LEGACY_WAL_NAME:
                found.append((0, path))
        return sorted(found)

    def _sync_dir(self) -> None:
        fd = os.open(self.dbpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- start-up -----------------------------------------------------------------------------

    def snapshot_records(self) -> Iterator[dict[str, Any]]:
        """The records of the snapshot (none if there is none); damage raises DataDirError."""
        path = self.dbpath / SNAPSHOT_NAME
        if not path.exists():
            self.snapshot_bytes = 0
            return
        self.snapshot_bytes = path.stat().st_size
        with path.open("rb", buffering=1 << 20) as handle:
            try:
                for _, record in _iter_frames(handle, self.snapshot_bytes):
                    yield record
            except _Damage as damage:
                raise DataDirError(
                    f"snapshot {path} is damaged at byte {damage.offset} ({damage.reason}); "
                    "refusing to start with incomplete data") from None

    def wal_records(self) -> Iterator[dict[str, Any]]:
        """The logged records in commit order; a torn tail of the last segment is cut off."""
        segments = self._segments()
        self.wal_bytes = 0
        for position, (_, path) in enumerate(segments):
            last = position == len(segments) - 1
            size = path.stat().st_size
            valid_end = 0
            with path.open("rb", buffering=1 << 20) as handle:
                try:
                    for end, record in _iter_frames(handle, size):
                        valid_end = end
                        yield record
                except _Damage as damage:
                    if not last:
                        raise DataDirError(
                            f"write-ahead log segment {path} is damaged at byte {damage.offset} "
                            f"({damage.reason}) but later segments exist; refusing to start "
                            "with a gap in the data") from None
                    log.warning("ignoring torn record at byte %d of %s (%s); %d bytes cut off",
                                damage.offset, path, damage.reason, size - damage.offset)
            if valid_end < size:
                with path.open("r+b") as handle:
                    handle.truncate(valid_end)
                    if self.fsync:
                        os.fsync(handle.fileno())
            self.wal_bytes += valid_end

    # -- appending ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the last log segment (a new one if there is none) for appending."""
        if self._fd is not None:
            return
        segments = self._segments()
        number = segments[-1][0] if segments else 1
        self._open_segment(number)

    def _open_segment(self, number: int) -> None:
        path = self.dbpath / (segment_name(number) if number else LEGACY_WAL_NAME)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._segment = number
        if self.fsync:
            self._sync_dir()

    def append(self, record: dict[str, Any]) -> None:
        """Write one commit record; returns once the OS has it (and the disk, with fsync)."""
        if self._fd is None:
            raise RuntimeError("persistence log is not open")
        frame = _frame(_encode(record))
        good_end = os.fstat(self._fd).st_size
        view = memoryview(frame)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            # Never leave half a record behind: later records after it would be unreadable.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, good_end)
            raise
        self.wal_bytes += len(frame)

    def rotate(self) -> list[Path]:
        """Switch appends to a new segment; returns the older segments (for the checkpoint)."""
        older = [path for _, path in self._segments()]
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_segment(self._segment + 1)
        return older

    # -- checkpoints --------------------------------------------------------------------------

    def write_snapshot(self, records: Iterable[dict[str, Any]]) -> int:
        """Atomically replace the snapshot with ``records``; returns its size in bytes.

        Touches nothing the appending side uses, so it may run in another thread.
        """
        tmp = self.dbpath / (SNAPSHOT_NAME + ".tmp")
        size = 0
        with tmp.open("wb", buffering=1 << 20) as handle:
            for record in records:
                for body in _split_encode(record):
                    frame = _frame(body)
                    handle.write(frame)
                    size += len(frame)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.dbpath / SNAPSHOT_NAME)
        self._sync_dir()
        return size

    def finish_checkpoint(self, snapshot_size: int, obsolete: list[Path]) -> None:
        """After :meth:`write_snapshot`: delete the segments the snapshot covers."""
        self.snapshot_bytes = snapshot_size
        for path in obsolete:
            with contextlib.suppress(FileNotFoundError):
                self.wal_bytes -= path.stat().st_size
                path.unlink()
        self.wal_bytes = max(self.wal_bytes, 0)

    def close(self) -> None:
        """Close the log file and release the directory lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
