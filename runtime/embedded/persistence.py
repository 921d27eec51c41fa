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
length or checksum and cut off at start-up. Damage anywhere else (a record that does not decode
or fails its checksum, a snapshot or older segment cut short) is not a crash artefact, but it
must not keep the server from serving everything else either: the damaged bytes, and any record
the loader cannot apply, are *set aside* into ``<dbpath>/quarantine/`` with one WARNING each,
and the server starts without them.

The data directory is private to the user: created 0700 (an existing one that group or others
may access is tightened, with a warning) and every file the server writes is 0600.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
QUARANTINE_DIR = "quarantine"
DIR_MODE = 0o700
FILE_MODE = 0o600
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


@dataclass
class _Damage:
    """A stretch of a file that holds no loadable record."""

    offset: int
    end: int
    reason: str
    #: Whether the rest of the file cannot be framed (a bad header or a cut-short record).
    fatal: bool


def _iter_frames(handle: IO[bytes], size: int) -> Iterator[tuple[int, dict[str, Any] | _Damage]]:
    """Decode the records of a ``size``-byte file one by one; yields ``(end offset, item)``.

    An item is a record, or a :class:`_Damage`: a complete frame whose checksum or BSON is bad
    (reading goes on after it), or a fatal one (a bad header or a cut-short frame) that ends
    the file, since nothing after it can be framed.
    """
    offset = 0
    while True:
        header = handle.read(_FRAME.size)
        if not header:
            return
        if len(header) < _FRAME.size:
            yield size, _Damage(offset, size, "truncated record header", True)
            return
        length, crc = _FRAME.unpack(header)
        if length < 5:
            yield size, _Damage(offset, size, f"invalid record length {length}", True)
            return
        end = offset + _FRAME.size + length
        if end > size:  # (don't allocate what a torn header claims)
            yield size, _Damage(offset, size, "truncated record", True)
            return
        body = handle.read(length)
        if len(body) < length:
            yield size, _Damage(offset, size, "truncated record", True)
            return
        offset = end
        if zlib.crc32(body) != crc:
            yield end, _Damage(end - _FRAME.size - length, end, "checksum mismatch", False)
            continue
        try:
            record = bson.decode(body, codec_options=CODEC)
        except Exception as exc:  # bson raises several unrelated exception types
            yield end, _Damage(end - _FRAME.size - length, end, f"undecodable record: {exc}",
                               False)
            continue
        yield end, record


def _private_file(path: Path, flags: int) -> int:
    """Open ``path`` with ``flags`` (creating it 0600) and make sure it is 0600 whatever the
    umask or its earlier mode."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def record_label(record: Any) -> str:
    """A short description of a stored record or log operation, for warnings and file names."""
    if not isinstance(record, dict):
        return f"value of type {type(record).__name__}"
    kind = record.get("kind") or record.get("op") or ("commit" if "ops" in record else "record")
    label = f"{kind} record" if "kind" in record else str(kind)
    db, coll = record.get("db"), record.get("coll")
    if isinstance(db, str):
        label += f" {db!r}" + (f".{coll!r}" if isinstance(coll, str) else "")
    ts = record.get("ts")
    if ts is not None:
        label += f" at {ts}"
    return label


class SetAside:
    """What :meth:`Persistence.setting_aside` yields: whether the guarded step failed."""

    def __init__(self) -> None:
        self.failed = False


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
            if dbpath.is_dir():
                self._tighten_directory()
            else:
                dbpath.mkdir(parents=True, mode=DIR_MODE)
                os.chmod(dbpath, DIR_MODE)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise DataDirError(f"cannot create --dbpath {dbpath}: "
                               f"{exc.strerror or exc}") from exc
        self._lock_fd = self._lock()
        # Left by a checkpoint that died before renaming it into place.
        (dbpath / (SNAPSHOT_NAME + ".tmp")).unlink(missing_ok=True)
        self._tighten_files()
        self._fd: int | None = None
        self._segment = 0
        #: Bytes in all log segments (what start-up would have to replay).
        self.wal_bytes = 0
        #: Size of the last snapshot written or loaded.
        self.snapshot_bytes = 0
        #: Records and damaged stretches set aside into ``quarantine/`` since start-up.
        self.set_aside_count = 0

    # -- directory ----------------------------------------------------------------------------

    def _tighten_directory(self) -> None:
        mode = stat.S_IMODE(self.dbpath.stat().st_mode)
        if mode & 0o077:
            log.warning("--dbpath %s was accessible to other users (mode %o); restricting it "
                        "to its owner (mode %o)", self.dbpath, mode, DIR_MODE)
            os.chmod(self.dbpath, DIR_MODE)

    def _tighten_files(self) -> None:
        """Make files written by older versions (0644 snapshots) private too."""
        for path in self.dbpath.iterdir():
            if path.name.startswith(("snapshot.", "wal.")) and path.is_file() \
                    and not path.is_symlink():
                with contextlib.suppress(OSError):
                    if stat.S_IMODE(path.stat().st_mode) & 0o077:
                        os.chmod(path, FILE_MODE)

    def _lock(self) -> int:
        path = self.dbpath / LOCK_NAME
        try:
            fd = _private_file(path, os.O_RDWR)
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

    # -- setting aside --------------------------------------------------------------------------

    def set_aside(self, what: str, data: bytes | dict[str, Any], reason: str) -> Path:
        """Save something start-up cannot load into ``quarantine/`` and say so (one WARNING).

        ``data`` is a decoded record (saved as BSON) or raw bytes (saved as they were).
        """
        folder = self.dbpath / QUARANTINE_DIR
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(folder, DIR_MODE)
        self.set_aside_count += 1
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", what).strip("-")[:60] or "record"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        if isinstance(data, bytes):
            body, suffix = data, ".bin"
        else:
            suffix = ".bson"
            try:
                body = _encode(data)
            except Exception:  # not encodable as it is: keep a readable form of it
                body = _encode({"unencodable": repr(data)})
        path = folder / f"{stamp}-{os.getpid()}-{self.set_aside_count:04d}-{slug}{suffix}"
        fd = _private_file(path, os.O_WRONLY | os.O_TRUNC)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("set aside %s (%s): saved to %s; the server starts without it and serves "
                    "everything else. Inspect the file (bsondump) and re-insert what is still "
                    "wanted", what, reason, path)
        return path

    @contextlib.contextmanager
    def setting_aside(self, what: str, record: Any) -> Iterator[SetAside]:
        """Run one loading step; if it raises, set ``record`` aside instead of failing start-up.

        The yielded :class:`SetAside` tells the caller afterwards whether the step failed.
        """
        guard = SetAside()
        try:
            yield guard
        except Exception as exc:
            guard.failed = True
            message = getattr(exc, "message", None) or str(exc)
            data = record if isinstance(record, dict | bytes) else {"value": repr(record)}
            self.set_aside(what, data, f"{type(exc).__name__}: {message}")

    def _set_aside_bytes(self, path: Path, damage: _Damage) -> None:
        with path.open("rb") as handle:
            handle.seek(damage.offset)
            data = handle.read(damage.end - damage.offset)
        self.set_aside(f"{path.name} bytes {damage.offset}-{damage.end}", data, damage.reason)

    # -- start-up -----------------------------------------------------------------------------

    def snapshot_records(self) -> Iterator[dict[str, Any]]:
        """The records of the snapshot (none if there is none); damage is set aside."""
        path = self.dbpath / SNAPSHOT_NAME
        if not path.exists():
            self.snapshot_bytes = 0
            return
        self.snapshot_bytes = path.stat().st_size
        with path.open("rb", buffering=1 << 20) as handle:
            for _, item in _iter_frames(handle, self.snapshot_bytes):
                if isinstance(item, _Damage):
                    self._set_aside_bytes(path, item)
                else:
                    yield item

    def wal_records(self) -> Iterator[dict[str, Any]]:
        """The logged records in commit order.

        A torn tail of the last segment is cut off; other damage is set aside.
        """
        segments = self._segments()
        self.wal_bytes = 0
        for position, (_, path) in enumerate(segments):
            last = position == len(segments) - 1
            size = path.stat().st_size
            kept_end = 0
            with path.open("rb", buffering=1 << 20) as handle:
                for end, item in _iter_frames(handle, size):
                    if not isinstance(item, _Damage):
                        kept_end = end
                        yield item
                    elif last and (item.fatal or (item.end == size
                                                  and item.reason == "checksum mismatch")):
                        # What a process dying mid-write leaves behind.
                        log.warning("ignoring torn record at byte %d of %s (%s); %d bytes cut "
                                    "off", item.offset, path, item.reason, size - item.offset)
                        break
                    else:
                        self._set_aside_bytes(path, item)
                        kept_end = end
            if kept_end < size and last:
                with path.open("r+b") as handle:
                    handle.truncate(kept_end)
                    if self.fsync:
                        os.fsync(handle.fileno())
            self.wal_bytes += kept_end

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
        self._fd = _private_file(path, os.O_WRONLY | os.O_APPEND)
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
        with os.fdopen(_private_file(tmp, os.O_WRONLY | os.O_TRUNC), "wb",
                       buffering=1 << 20) as handle:
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
