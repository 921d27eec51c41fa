"""``runtime db --dbpath DIR`` writes its URI to ``DIR/uri`` (mode 0600) as well as printing it
as its first stdout line, so that tools next to it can find the server (issue 11)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime.embedded.process import EmbeddedServer, recorded_port

pytestmark = pytest.mark.embedded_only


def test_dbpath_gets_a_private_uri_file_matching_the_first_stdout_line(tmp_path: Path) -> None:
    dbpath = tmp_path / "db"
    dbpath.mkdir()
    stale = dbpath / "uri"
    stale.write_text("mongodb://127.0.0.1:1/\n", encoding="utf-8")
    os.chmod(stale, 0o644)
    with EmbeddedServer(dbpath=dbpath) as server:
        assert stale.read_text(encoding="utf-8") == f"{server.uri}\n"
        assert stat.S_IMODE(stale.stat().st_mode) == 0o600
        assert recorded_port(stale) == server.port
        # A restart on the same port rewrites the same URI.
        assert server.restart() == server.uri
        assert stale.read_text(encoding="utf-8") == f"{server.uri}\n"
    assert [p.name for p in dbpath.iterdir() if p.name.startswith(".uri")] == [], \
        "no temporary file is left behind"


def test_in_memory_writes_no_uri_file(tmp_path: Path) -> None:
    with EmbeddedServer(log_path=tmp_path / "db.log") as server:
        assert server.uri.startswith("mongodb://127.0.0.1:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.log"]


@pytest.mark.parametrize("text", ["", "not a uri\n", "mongodb://127.0.0.1/\n"])
def test_an_unusable_uri_file_records_no_port(tmp_path: Path, text: str) -> None:
    path = tmp_path / "uri"
    path.write_text(text, encoding="utf-8")
    assert recorded_port(path) is None
    assert recorded_port(tmp_path / "missing") is None
