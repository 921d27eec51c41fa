"""The Node.js ``mongodb`` driver (6.x) against the server: it sends its first hello as OP_QUERY.

Runs ``check.js`` (CRUD, change stream, transactions, a retried write) with ``node``, after
installing the pinned driver into ``tests/node/node_modules`` with ``npm ci``. Skipped only when
``node`` or ``npm`` is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
INSTALL_TIMEOUT_S = 600
RUN_TIMEOUT_S = 180


def _pinned_version() -> str:
    package = json.loads((HERE / "package.json").read_text())
    return str(package["dependencies"]["mongodb"])


def _installed_version() -> str | None:
    installed = HERE / "node_modules" / "mongodb" / "package.json"
    if not installed.exists():
        return None
    return str(json.loads(installed.read_text())["version"])


@pytest.fixture(scope="module")
def node() -> str:
    """Path of ``node``, with the pinned driver installed next to this file."""
    node_path, npm_path = shutil.which("node"), shutil.which("npm")
    if node_path is None or npm_path is None:
        missing = " and ".join(n for n, p in (("node", node_path), ("npm", npm_path)) if not p)
        pytest.skip(f"{missing} not installed: the Node.js driver check needs Node.js and npm")
    if _installed_version() != _pinned_version():
        result = subprocess.run(
            [npm_path, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    assert _installed_version() == _pinned_version()
    return node_path


def test_node_driver_crud_change_stream_transactions(node: str, mongodb_uri: str) -> None:
    result = subprocess.run(
        [node, str(HERE / "check.js"), mongodb_uri],
        cwd=HERE, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, f"check.js failed:\n{result.stderr}\n{result.stdout}"
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["driverVersion"] == _pinned_version()
    # A plain URI discovers a replica set with a primary; directConnection gives Single.
    assert report["plain"]["topologyType"] == "ReplicaSetWithPrimary"
    assert report["plain"]["serverTypes"] == ["RSPrimary"]
    assert report["plain"]["logicalSessionTimeoutMinutes"] is not None
    assert report["direct"]["topologyType"] == "Single"
    assert report["direct"]["serverTypes"] == ["RSPrimary"]

    assert report["found"] == [{"_id": 1, "name": "one", "n": 1},
                               {"_id": 2, "name": "two", "n": 12}]
    assert report["insertHadLsid"] and report["insertHadTxnNumber"]

    # The change stream saw the committed transaction (one txnNumber, with lsid), never the
    # aborted one, then the later plain insert.
    events = report["events"]
    assert [(e["operationType"], e["id"]) for e in events] == [
        ("insert", 10), ("insert", 11), ("insert", 30)]
    assert events[0]["hasLsid"] and events[1]["hasLsid"]
    assert events[0]["txnNumber"] == events[1]["txnNumber"] is not None
    assert events[2]["txnNumber"] is None
    assert [d["_id"] for d in report["afterTransactions"]] == [10, 11, 30]

    if "retry" in report:  # only where configureFailPoint is enabled
        assert report["retry"] == {"inserts": 2, "stored": 1}
