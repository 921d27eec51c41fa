"""The data folder is private to its user (issue 10 item 8), whatever the umask.

The snapshot used to be written 0644 and the data folder 0755. Now the folder is 0700, every
file the server writes (snapshot, write-ahead log, temporary files, lock, quarantine) is 0600,
and an existing folder others can read is tightened with a warning.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from support import ServerFactory

pytestmark = pytest.mark.embedded_only


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask (inherited by the server process) for the duration of a test."""
    previous = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(previous)


def _assert_private(dbpath: Path) -> None:
    assert _mode(dbpath) == 0o700
    files = [p for p in dbpath.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert _mode(path) == 0o600, f"{path} is {oct(_mode(path))}"
    for folder in (p for p in dbpath.rglob("*") if p.is_dir()):
        assert _mode(folder) == 0o700, f"{folder} is {oct(_mode(folder))}"


def test_data_folder_is_0700_and_files_0600_after_writes_and_checkpoint(
        fresh_server: ServerFactory, open_umask: None) -> None:
    server = fresh_server()
    assert server.dbpath is not None
    with MongoClient(server.uri) as client:
        client.app.c.insert_many([{"_id": i} for i in range(10)])
    _assert_private(server.dbpath)  # lock and write-ahead log
    assert server.stop() == 0  # the final checkpoint writes the snapshot
    assert (server.dbpath / "snapshot.bson").exists()
    _assert_private(server.dbpath)
    server.restart()
    with MongoClient(server.uri) as client:
        client.app.c.insert_one({"_id": "more"})
    _assert_private(server.dbpath)


def test_existing_open_data_folder_is_tightened_with_a_warning(
        fresh_server: ServerFactory, tmp_path: Path, open_umask: None) -> None:
    dbpath = tmp_path / "shared"
    dbpath.mkdir(mode=0o755)
    os.chmod(dbpath, 0o755)
    server = fresh_server(dbpath=dbpath)
    with MongoClient(server.uri) as client:
        client.app.c.insert_one({"_id": 1})
    assert server.stop() == 0
    assert "was accessible to other users (mode 755)" in server.log_path.read_text()
    # Files left readable by an older version are tightened at the next start.
    os.chmod(dbpath, 0o755)
    os.chmod(dbpath / "snapshot.bson", 0o644)
    server.restart()
    _assert_private(dbpath)


def test_quarantine_files_are_private(fresh_server: ServerFactory, open_umask: None) -> None:
    server = fresh_server()
    assert server.dbpath is not None
    with MongoClient(server.uri) as client:
        client.app.c.insert_one({"_id": 1})
    server.kill()
    segment = sorted(server.dbpath.glob("wal.*.log"))[-1]
    with segment.open("ab") as wal:  # a frame whose checksum is right but whose BSON is not
        body = b"\x08\x00\x00\x00\x99a\x00\x00"
        wal.write(struct.pack("<iI", len(body), zlib.crc32(body)) + body)
    server.restart()
    assert list((server.dbpath / "quarantine").iterdir())
    _assert_private(server.dbpath)
