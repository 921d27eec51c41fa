"""``runtime serve --dashboard-port``: the dashboard inside a runtime instance."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from scenario import build, runs_of, start
from support import wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_runs_the_dashboard_and_refuses_actions_without_the_token(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    port = _free_port()
    a = start(start_runtime, app, "a", "--dashboard-port", str(port),
              "--dashboard-token", "s3cret-token")
    url = a.wait_for_log(r"event=dashboard\.started .*url=(http://127\.0\.0\.1:\d+/?)").group(1)
    assert str(port) in url
    db.things.insert_one({"_id": "x", "n": 1})
    wait_until(lambda: runs_of(db, "x"))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
        page = reply.read().decode()
    assert reply.status == 200 and "record" in page
    # A mutating action with neither the token nor a CSRF field is refused and changes nothing.
    request = urllib.request.Request(f"http://127.0.0.1:{port}/actions/pause",
                                     data=b"reactor=record", method="POST")
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("an unauthenticated action was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    assert not (db.reactgen_meta.find_one({"_id": "reactor:record"}) or {}).get("paused")
    assert "s3cret-token" not in a.log()
