"""``runtime db --auth``: what belongs to a user, as on mongod 7.0.

* a cursor belongs to the user (and session) that opened it: ``getMore`` from another is
  Unauthorized, ``killCursors`` of another user's cursor too unless the caller may kill any;
* a session (``lsid``) belongs to its user: another user sending the same ``lsid`` gets a
  session of its own;
* a connection holds one user: authenticating as another needs a ``logout`` first;
* the server's log file (and the folders made for it) are private whatever the umask.

Through PyMongo where it can say it, and through raw OP_MSG where a test needs an exact
``lsid`` or none at all (PyMongo always sends its own), against real ``runtime db --auth``
processes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson.binary import Binary
from bson.int64 import Int64
from pymongo.errors import OperationFailure
from raw_wire import RawConnection, new_lsid
from scramp import ScramClient
from test_auth import PASSWORDS, clients, server  # noqa: F401  (fixtures)

from runtime.embedded.process import EmbeddedServer

pytestmark = pytest.mark.embedded_only

# writer: readWrite on app; reader: read on app; rwany: readWriteAnyDatabase; root: root.
USER_DB = {"writer": "app", "reader": "app", "rwany": "admin", "root": "admin"}


def _sasl(conn: RawConnection, user: str, password: str | None = None,
          db: str | None = None) -> dict[str, Any]:
    """A SCRAM-SHA-256 authentication on a raw connection; the last reply (ok or not)."""
    db = db or USER_DB[user]
    scram = ScramClient(["SCRAM-SHA-256"], user, password or PASSWORDS[user])
    start = conn.command({"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                          "payload": Binary(scram.get_client_first().encode()),
                          "options": {"skipEmptyExchange": True}, "$db": db})
    if not start["ok"]:
        return start
    scram.set_server_first(bytes(start["payload"]).decode())
    return conn.command({"saslContinue": 1, "conversationId": start["conversationId"],
                         "payload": Binary(scram.get_client_final().encode()), "$db": db})


@pytest.fixture
def login(server: EmbeddedServer) -> Iterator[Any]:  # noqa: F811
    """Factory of raw connections authenticated as a user, closed after the test."""
    made: list[RawConnection] = []

    def make(user: str) -> RawConnection:
        conn = RawConnection(server.uri)
        made.append(conn)
        assert _sasl(conn, user)["ok"] == 1
        return conn

    yield make
    for conn in made:
        conn.close()


def _run(conn: RawConnection, body: dict[str, Any], db: str = "app",
         lsid: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {**body, "$db": db}
    if lsid is not None:
        doc["lsid"] = lsid
    return conn.command(doc)


def _open_find(conn: RawConnection, lsid: dict[str, Any] | None = None) -> int:
    reply = _run(conn, {"find": "items", "sort": {"_id": 1}, "batchSize": 1}, lsid=lsid)
    assert reply["ok"] == 1 and reply["cursor"]["id"], reply
    return int(reply["cursor"]["id"])


def _get_more(conn: RawConnection, cursor_id: int, lsid: dict[str, Any] | None = None,
              collection: str = "items") -> dict[str, Any]:
    return _run(conn, {"getMore": Int64(cursor_id), "collection": collection, "batchSize": 1},
                lsid=lsid)


def _error(reply: dict[str, Any]) -> tuple[int, str]:
    assert reply["ok"] == 0, reply
    return reply["code"], reply["errmsg"]


def _session_text(lsid: dict[str, Any] | None, user: str) -> str:
    """An lsid as mongod prints it: ``<uuid> - <base64 sha256 of user@db> -  - ``."""
    if lsid is None:
        return "none"
    digest = base64.b64encode(hashlib.sha256(f"{user}@{USER_DB[user]}".encode()).digest())
    return f"{lsid['id']} - {digest.decode()} -  - "


def _not_same_session(opener: str, opener_lsid: dict[str, Any] | None, caller: str,
                      caller_lsid: dict[str, Any] | None) -> tuple[int, str]:
    return 13, (f"Cursor session id ({_session_text(opener_lsid, opener)}) is not the same as "
                f"the operation context's session id ({_session_text(caller_lsid, caller)})")


# -- cursors ----------------------------------------------------------------------------------


def _open_cursor(conn: RawConnection, kind: str) -> tuple[int, str]:
    """Open a cursor of ``kind`` that has more to give; its id and getMore collection."""
    bodies: dict[str, dict[str, Any]] = {
        "find": {"find": "items", "batchSize": 1},
        "aggregate": {"aggregate": "items", "pipeline": [], "cursor": {"batchSize": 1}},
        "listCollections": {"listCollections": 1, "cursor": {"batchSize": 0}},
        "listIndexes": {"listIndexes": "items", "cursor": {"batchSize": 0}},
        "changeStream": {"aggregate": "items", "pipeline": [{"$changeStream": {}}],
                         "cursor": {}},
    }
    reply = _run(conn, bodies[kind])
    assert reply["ok"] == 1 and reply["cursor"]["id"], reply
    return int(reply["cursor"]["id"]), reply["cursor"]["ns"].split(".", 1)[1]


@pytest.mark.parametrize("kind", ["find", "aggregate", "listCollections", "listIndexes",
                                  "changeStream"])
def test_get_more_of_another_users_cursor_is_unauthorized(login: Any, kind: str) -> None:
    owner = login("writer")
    cursor_id, collection = _open_cursor(owner, kind)
    for other in ("rwany", "root"):  # not even root may read another user's cursor
        reply = _get_more(login(other), cursor_id, collection=collection)
        assert _error(reply) == (13, f"cursor id {cursor_id} was not created by the "
                                     "authenticated user")
    # The refusals left the cursor alone: its owner, on another connection, carries on.
    reply = _run(login("writer"), {"getMore": Int64(cursor_id), "collection": collection,
                                   "maxTimeMS": 1})
    assert reply["ok"] == 1, reply


def test_get_more_from_another_session_is_unauthorized(login: Any) -> None:
    writer = login("writer")
    first, second = new_lsid(), new_lsid()
    cursor_id = _open_find(writer, first)
    assert _error(_get_more(writer, cursor_id, second)) == \
        _not_same_session("writer", first, "writer", second)
    assert _error(_get_more(writer, cursor_id)) == \
        _not_same_session("writer", first, "writer", None)
    # the same lsid from another user is another session (it carries the user's digest)
    assert _error(_get_more(login("rwany"), cursor_id, first)) == \
        _not_same_session("writer", first, "rwany", first)
    unsessioned = _open_find(writer)
    assert _error(_get_more(writer, unsessioned, first)) == \
        _not_same_session("writer", None, "writer", first)
    assert _get_more(writer, cursor_id, first)["cursor"]["nextBatch"] == [{"_id": 2}]


def test_pymongo_get_more_of_another_clients_cursor(clients: Any) -> None:  # noqa: F811
    owner = clients("writer", "app")
    reply = owner.app.command("find", "items", batchSize=1)
    cursor_id = reply["cursor"]["id"]
    for other in (clients("rwany"), clients("root"), clients("writer", "app")):
        with pytest.raises(OperationFailure) as failed:
            other.app.command("getMore", Int64(cursor_id), collection="items")
        assert failed.value.code == 13
        assert str(failed.value.details and failed.value.details["errmsg"]).startswith(
            "Cursor session id (")
    owner.app.command("killCursors", "items", cursors=[cursor_id])
    # ordinary use is untouched: a cursor's getMores carry the session of its find
    assert [d["_id"] for d in owner.app.items.find(batch_size=1).sort("_id", 1)][:2] == [1, 2]


def test_kill_cursors_of_another_user_is_unauthorized(login: Any) -> None:
    writer = login("writer")
    cursor_id = _open_find(writer)
    unknown = Int64(123_456_789)
    reader = login("reader")
    code, message = _error(_run(reader, {"killCursors": "items",
                                         "cursors": [unknown, Int64(cursor_id)]}))
    assert code == 13
    assert message.startswith("not authorized on app to execute command killCursors: "
                              f"cursor id {cursor_id} on app.items was not created by the "
                              "authenticated user")
    reply = _run(reader, {"killCursors": "items", "cursors": [unknown]})
    assert reply["cursorsNotFound"] == [unknown] and reply["cursorsKilled"] == []
    assert _get_more(writer, cursor_id)["cursor"]["nextBatch"] == [{"_id": 2}]

    # its owner may kill it from any session; clusterAdmin/root may kill anyone's
    own = _open_find(writer, new_lsid())
    reply = _run(writer, {"killCursors": "items", "cursors": [Int64(own)]}, lsid=new_lsid())
    assert reply["cursorsKilled"] == [own]
    theirs = _open_find(writer)
    reply = _run(login("root"), {"killCursors": "items", "cursors": [Int64(theirs)]})
    assert reply["cursorsKilled"] == [theirs]


# -- sessions ---------------------------------------------------------------------------------


def test_same_lsid_from_another_user_is_another_session(login: Any) -> None:
    writer, other = login("writer"), login("rwany")
    lsid = new_lsid()
    assert _run(writer, {"insert": "sessions", "documents": [{"_id": "w7"}],
                         "txnNumber": Int64(7)}, lsid=lsid)["n"] == 1
    # Shared with writer's, txnNumber 3 < 7 would be TransactionTooOld.
    reply = _run(other, {"insert": "sessions", "documents": [{"_id": "o3"}],
                         "txnNumber": Int64(3)}, lsid=lsid)
    assert reply["ok"] == 1 and reply["n"] == 1, reply

    # A transaction stays its user's: another user can neither commit nor end it.
    txn = {"txnNumber": Int64(1), "autocommit": False}
    tx_lsid = new_lsid()
    started = _run(writer, {"insert": "sessions", "documents": [{"_id": "t1"}],
                            "startTransaction": True, **txn}, lsid=tx_lsid)
    assert started["ok"] == 1, started
    assert _error(_run(other, {"commitTransaction": 1, **txn}, "admin", tx_lsid))[0] == 251
    assert _run(other, {"endSessions": [tx_lsid]}, "admin")["ok"] == 1
    assert _run(writer, {"commitTransaction": 1, **txn}, "admin", tx_lsid)["ok"] == 1
    found = _run(writer, {"find": "sessions", "filter": {}, "sort": {"_id": 1}})
    assert [d["_id"] for d in found["cursor"]["firstBatch"]] == ["o3", "t1", "w7"]


# -- one user per connection ------------------------------------------------------------------


def test_one_user_per_connection(server: EmbeddedServer) -> None:  # noqa: F811
    with RawConnection(server.uri) as conn:
        assert _sasl(conn, "writer")["ok"] == 1
        assert _sasl(conn, "writer")["ok"] == 1  # the same user again is fine
        # a wrong password is still just a failed authentication
        assert _error(_sasl(conn, "reader", password="wrong")) == (18, "Authentication failed.")
        assert _error(_sasl(conn, "reader")) == (
            5626701, "Each client connection may only be authenticated once. Previously "
                     "authenticated as: writer@app")
        assert _error(_sasl(conn, "root")) == (
            5626702, "Client has attempted to authenticate on multiple databases.Already "
                     "authenticated as: writer@app")
        status = _run(conn, {"connectionStatus": 1}, "admin")["authInfo"]
        assert status["authenticatedUsers"] == [{"user": "writer", "db": "app"}]

        assert _run(conn, {"logout": 1}, "app")["ok"] == 1
        assert _sasl(conn, "reader")["ok"] == 1
        status = _run(conn, {"connectionStatus": 1}, "admin")["authInfo"]
        assert status["authenticatedUsers"] == [{"user": "reader", "db": "app"}]


def test_speculative_authentication_as_a_second_user(server: EmbeddedServer) -> None:  # noqa: F811
    with RawConnection(server.uri) as conn:
        assert _sasl(conn, "writer")["ok"] == 1
        scram = ScramClient(["SCRAM-SHA-256"], "rwany", PASSWORDS["rwany"])
        hello = _run(conn, {"hello": 1, "speculativeAuthenticate": {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256", "db": "admin",
            "payload": Binary(scram.get_client_first().encode()),
            "options": {"skipEmptyExchange": True}}}, "admin")
        first = hello["speculativeAuthenticate"]
        scram.set_server_first(bytes(first["payload"]).decode())
        reply = _run(conn, {"saslContinue": 1, "conversationId": first["conversationId"],
                            "payload": Binary(scram.get_client_final().encode())}, "admin")
        assert _error(reply)[0] == 5626702
        status = _run(conn, {"connectionStatus": 1}, "admin")["authInfo"]
        assert status["authenticatedUsers"] == [{"user": "writer", "db": "app"}]


# -- log file ---------------------------------------------------------------------------------


def test_log_file_and_its_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    stale = tmp_path / "stale.log"
    stale.write_text("from an older version\n")
    stale.chmod(0o644)
    previous = os.umask(0)  # the loosest umask: modes must not depend on it
    try:
        log_path = tmp_path / "logs" / "nested" / "server.log"
        with EmbeddedServer(dbpath=tmp_path / "data" / "db", log_path=log_path):
            pass
        with EmbeddedServer(log_path=stale):
            pass
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(log_path) == 0o600
    assert mode(stale) == 0o600
    assert "from an older version" in stale.read_text()
    for folder in (tmp_path / "logs", tmp_path / "logs" / "nested", tmp_path / "data",
                   tmp_path / "data" / "db"):
        assert mode(folder) == 0o700, folder
