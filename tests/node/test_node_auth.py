"""The Node.js ``mongodb`` driver (6.x) authenticates against ``runtime db --auth``.

Runs ``auth_check.js``: SCRAM-SHA-256 by default negotiation (speculativeAuthenticate in the
handshake), SCRAM-SHA-256 and SCRAM-SHA-1 named explicitly, a wrong password (18) and an
unauthenticated command (13). Uses the ``node`` fixture of ``test_node_driver.py`` (skipped when
Node.js or npm is missing).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_node_driver import HERE, RUN_TIMEOUT_S, node  # noqa: F401  (fixture)

from runtime.embedded.process import EmbeddedServer

pytestmark = pytest.mark.embedded_only

USER, PASSWORD = "nodeuser", "pw-node-Gh38w"


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    users = tmp_path / "users.json"
    users.write_text(json.dumps([{"user": USER, "password": PASSWORD,
                                  "roles": [{"role": "readWrite", "db": "node_auth"}]}]))
    users.chmod(0o600)
    with EmbeddedServer(auth=True, users_file=users, log_path=tmp_path / "server.log") as server:
        yield server


def test_node_driver_authenticates_with_scram(node: str,  # noqa: F811
                                              auth_server: EmbeddedServer) -> None:
    result = subprocess.run(
        [node, str(HERE / "auth_check.js"), auth_server.uri, USER, PASSWORD],
        cwd=HERE, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, f"auth_check.js failed:\n{result.stderr}\n{result.stdout}"
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    expected_users = [{"user": USER, "db": "admin"}]
    for name, count in (("default", 1), ("sha256", 2), ("sha1", 3)):
        assert report[name]["ok"], report[name]
        assert report[name]["value"] == {"count": count, "users": expected_users}
    assert report["wrongPassword"]["ok"] is False
    assert report["wrongPassword"]["code"] == 18
    assert "Authentication failed." in report["wrongPassword"]["message"]
    assert report["anonymous"]["ok"] is False
    assert report["anonymous"]["code"] == 13
    log = auth_server.log_path.read_text()
    assert "authenticated as nodeuser@admin (SCRAM-SHA-256)" in log
    assert "authenticated as nodeuser@admin (SCRAM-SHA-1)" in log
    assert PASSWORD not in log
