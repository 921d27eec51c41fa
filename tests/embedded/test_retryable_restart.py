"""Retryable-write records survive a restart, as mongod's ``config.transactions`` does.

mongod stores each session's latest ``txnNumber`` and the outcome of its retryable write in
``config.transactions``, written in the same storage transaction as the write, so a retry (same
``lsid`` and ``txnNumber``) after a restart or failover returns the original result instead of
writing twice (manual, "Retryable Writes"; "Transactions" for a retried ``commitTransaction``).
Here the record is logged with the write in one write-ahead record; a clean restart carries it
through the checkpoint snapshot, a SIGKILL through the log replay.

The commands carry a chosen ``lsid`` and ``txnNumber``, so they go over a raw connection (PyMongo
would replace the ``lsid`` with one of its own sessions'); results are read with PyMongo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from raw_wire import RawConnection, RawSession, new_lsid
from support import ServerFactory

from runtime.embedded.process import EmbeddedServer

pytestmark = pytest.mark.embedded_only

Doc = dict[str, Any]
DB = "retry_restart"


def _connect(server: EmbeddedServer) -> MongoClient[Doc]:
    """A client of ``server`` (for reading results)."""
    return MongoClient(server.uri)


def _strip(reply: Doc) -> Doc:
    return {k: v for k, v in reply.items() if k not in ("operationTime", "$clusterTime")}


@pytest.fixture
def session_on() -> Iterator[Callable[[EmbeddedServer, dict[str, Any]], RawSession]]:
    """``session_on(server, lsid)``: a raw session with a given ``lsid`` (closed after)."""
    conns: list[RawConnection] = []

    def make(server: EmbeddedServer, lsid: dict[str, Any]) -> RawSession:
        conn = RawConnection(server.uri)
        conns.append(conn)
        session = RawSession(conn, DB)
        session.lsid = lsid
        return session

    yield make
    for conn in conns:
        conn.close()


def _restart(server: EmbeddedServer, crash: bool) -> None:
    if crash:
        assert server.kill() == -9
    server.restart()


@pytest.mark.parametrize("crash", [False, True], ids=["clean_restart", "sigkill"])
def test_retried_insert_after_restart_returns_original_n_without_duplicate(
        fresh_server: ServerFactory, session_on: Any, crash: bool) -> None:
    """Same lsid + txnNumber after a restart: the recorded reply (n: 2), nothing inserted twice
    (MongoDB "Retryable Writes": the retry is not applied again)."""
    server = fresh_server()
    lsid = new_lsid()
    command = {"insert": "items", "documents": [{"v": 1}, {"v": 2}]}  # no _id: retry-sensitive
    first = session_on(server, lsid).run(command, 5)
    assert first["ok"] == 1.0 and first["n"] == 2
    _restart(server, crash)
    retried = session_on(server, lsid).run(command, 5)
    assert _strip(retried) == _strip(first)
    with _connect(server) as client:
        assert client[DB].items.count_documents({}) == 2


@pytest.mark.parametrize("crash", [False, True], ids=["clean_restart", "sigkill"])
def test_retried_inc_update_after_restart_is_applied_once(
        fresh_server: ServerFactory, session_on: Any, crash: bool) -> None:
    """An ``$inc`` retried after a restart answers the original nModified and is not applied
    again."""
    server = fresh_server()
    with _connect(server) as client:
        client[DB].counters.insert_one({"_id": "c", "n": 0})
    lsid = new_lsid()
    command = {"update": "counters", "updates": [{"q": {"_id": "c"}, "u": {"$inc": {"n": 1}}}]}
    first = session_on(server, lsid).run(command, 1)
    assert first["nModified"] == 1
    _restart(server, crash)
    assert _strip(session_on(server, lsid).run(command, 1)) == _strip(first)
    with _connect(server) as client:
        assert client[DB].counters.find_one({"_id": "c"}) == {"_id": "c", "n": 1}


@pytest.mark.parametrize("crash", [False, True], ids=["clean_restart", "sigkill"])
def test_retried_find_and_modify_after_restart_returns_same_value(
        fresh_server: ServerFactory, session_on: Any, crash: bool) -> None:
    """findAndModify retried after a restart returns the document it returned the first time
    (mongod keeps the pre/post image for retries) and modifies nothing more."""
    server = fresh_server()
    with _connect(server) as client:
        client[DB].jobs.insert_many([{"_id": 1, "state": "new"}, {"_id": 2, "state": "new"}])
    lsid = new_lsid()
    command = {"findAndModify": "jobs", "query": {"state": "new"}, "sort": {"_id": 1},
               "update": {"$set": {"state": "claimed"}}, "new": True}
    first = session_on(server, lsid).run(command, 3)
    assert first["value"] == {"_id": 1, "state": "claimed"}
    _restart(server, crash)
    retried = session_on(server, lsid).run(command, 3)
    assert retried["value"] == first["value"]
    with _connect(server) as client:
        assert client[DB].jobs.count_documents({"state": "claimed"}) == 1


def test_older_txn_number_after_restart_is_transaction_too_old(
        fresh_server: ServerFactory, session_on: Any) -> None:
    """The restored record remembers the session's latest txnNumber: an older one is
    TransactionTooOld (225), as before the restart."""
    server = fresh_server()
    lsid = new_lsid()
    session_on(server, lsid).run({"insert": "items", "documents": [{"_id": 1}]}, 7)
    _restart(server, crash=True)
    reply = session_on(server, lsid).run({"insert": "items", "documents": [{"_id": 2}]}, 6)
    assert reply["ok"] == 0 and reply["code"] == 225


def test_retried_commit_after_restart_succeeds(fresh_server: ServerFactory,
                                               session_on: Any) -> None:
    """commitTransaction retried after a restart still reports success (mongod: a retried
    commit of a committed transaction succeeds), and the transaction's write is there once."""
    server = fresh_server()
    lsid = new_lsid()
    session = session_on(server, lsid)
    assert session.in_txn({"insert": "items", "documents": [{"_id": "t"}]}, 4,
                          start=True)["ok"] == 1.0
    assert session.commit(4)["ok"] == 1.0
    _restart(server, crash=True)
    assert session_on(server, lsid).commit(4)["ok"] == 1.0
    with _connect(server) as client:
        assert client[DB].items.count_documents({}) == 1
