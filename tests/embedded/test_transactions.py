"""Multi-document transactions through PyMongo, and the server's transaction state machine.

PyMongo refuses some sequences client-side (abort after commit, for instance), so those are sent
as raw commands with an explicit ``lsid``/``txnNumber`` (see ``raw_wire.RawSession``).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from failpoint_helpers import CommandRecorder, fail_point
from pymongo import AsyncMongoClient, MongoClient
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure
from raw_wire import RawConnection, RawSession
from support import ServerFactory, wait_until

TRANSIENT = "TransientTransactionError"


@pytest.fixture
def items(db: Database[dict[str, Any]]) -> Collection[dict[str, Any]]:
    coll = db.items
    coll.insert_one({"_id": "existing", "n": 0})
    return coll


@pytest.fixture
def raw(mongodb_uri: str, db: Database[dict[str, Any]]) -> Any:
    with RawConnection(mongodb_uri) as conn:
        yield RawSession(conn, db.name)


def _drain(stream: Any, until_id: Any) -> list[dict[str, Any]]:
    """Change events up to and including the insert of ``until_id``."""
    events = []
    while True:
        change = stream.next()
        events.append(change)
        if change["operationType"] == "insert" and change["documentKey"]["_id"] == until_id:
            return events


# -- commit / abort visibility ------------------------------------------------------------------


def test_commit_makes_all_writes_visible_at_once(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    with items.watch(max_await_time_ms=200) as stream, client.start_session() as session:
        session.start_transaction()
        items.insert_many([{"_id": i} for i in range(5)], session=session)
        items.update_one({"_id": "existing"}, {"$set": {"n": 1}}, session=session)
        items.delete_one({"_id": 0}, session=session)
        # Inside: its own writes. Outside: none of them.
        assert items.count_documents({}, session=session) == 5
        assert items.find_one({"_id": "existing"}, session=session) == {"_id": "existing", "n": 1}
        assert items.count_documents({}) == 1
        assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 0}
        assert stream.try_next() is None
        session.commit_transaction()

        assert sorted(d["_id"] for d in items.find({"_id": {"$type": "int"}})) == [1, 2, 3, 4]
        assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 1}
        items.insert_one({"_id": "marker"})
        events = _drain(stream, "marker")

    txn_events = events[:-1]
    assert {e["operationType"] for e in txn_events} == {"insert", "update"}
    # A document inserted and deleted inside the transaction never existed outside it.
    assert 0 not in [e["documentKey"]["_id"] for e in txn_events]
    assert len(txn_events) == 5
    assert len({e["clusterTime"] for e in txn_events}) == 1
    assert all(e["lsid"] == txn_events[0]["lsid"] for e in txn_events)
    assert {e["txnNumber"] for e in txn_events} == {txn_events[0]["txnNumber"]}
    assert "txnNumber" not in events[-1]


def test_concurrent_reader_sees_none_or_all_of_a_transaction(
        mongodb_uri: str, client: MongoClient[dict[str, Any]],
        items: Collection[dict[str, Any]]) -> None:
    size = 50
    observed: set[int] = set()
    stop = threading.Event()
    errors: list[BaseException] = []
    reader: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri)
    reader_items = reader[items.database.name].items

    def read() -> None:
        try:
            while not stop.is_set():
                observed.add(reader_items.count_documents({"batch": 1}))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        with client.start_session() as session:
            session.start_transaction()
            for i in range(size):
                items.insert_one({"_id": f"b{i}", "batch": 1}, session=session)
            wait_until(lambda: 0 in observed, message="reader running")
            session.commit_transaction()
        wait_until(lambda: size in observed or errors, message="reader saw the commit")
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert not errors
    assert observed == {0, size}


def test_aborted_transaction_is_never_visible(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    with items.watch(max_await_time_ms=200) as stream, client.start_session() as session:
        session.start_transaction()
        items.insert_one({"_id": "ghost"}, session=session)
        items.update_one({"_id": "existing"}, {"$set": {"n": 99}}, session=session)
        items.delete_one({"_id": "existing"}, session=session)
        session.abort_transaction()
        items.insert_one({"_id": "marker"})
        events = _drain(stream, "marker")
    assert [e["documentKey"]["_id"] for e in events] == ["marker"]
    assert items.find_one({"_id": "ghost"}) is None
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 0}


def test_ending_a_session_discards_its_open_transaction(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    session = client.start_session()
    session.start_transaction()
    items.insert_one({"_id": "left-open"}, session=session)
    session.end_session()  # aborts the transaction
    assert items.find_one({"_id": "left-open"}) is None
    # Its document lock is gone: another transaction may write the same document.
    with client.start_session() as other, other.start_transaction():
        items.insert_one({"_id": "left-open"}, session=other)
    assert items.find_one({"_id": "left-open"}) == {"_id": "left-open"}


@pytest.mark.parametrize("command", ["endSessions", "killSessions"])
def test_end_or_kill_sessions_aborts_the_open_transaction(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        raw: RawSession, command: str) -> None:
    raw.in_txn({"update": "items", "updates": [{"q": {"_id": "existing"},
                                                "u": {"$set": {"n": "raw"}}}]}, 1, start=True)
    assert raw.conn.command({command: [raw.lsid], "$db": "admin"})["ok"] == 1
    assert raw.commit(1)["code"] == 251
    with client.start_session() as other, other.start_transaction():
        items.update_one({"_id": "existing"}, {"$set": {"n": "other"}}, session=other)
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": "other"}


# -- the commit / abort state machine ---------------------------------------------------------


def test_commit_retried_for_a_committed_transaction_is_ok(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        raw: RawSession) -> None:
    with client.start_session() as session:
        session.start_transaction()
        items.insert_one({"_id": "once"}, session=session)
        session.commit_transaction()
        session.commit_transaction()  # PyMongo re-sends commitTransaction
    assert items.count_documents({"_id": "once"}) == 1

    assert raw.in_txn({"insert": "items", "documents": [{"_id": "raw"}]}, 1, start=True)["ok"]
    assert raw.commit(1)["ok"] == 1
    for _ in range(3):
        again = raw.commit(1)
        assert again["ok"] == 1, again
    assert items.count_documents({"_id": "raw"}) == 1


def test_abort_after_commit_is_transaction_committed(raw: RawSession) -> None:
    raw.in_txn({"insert": "items", "documents": [{"_id": 1}]}, 1, start=True)
    assert raw.commit(1)["ok"] == 1
    reply = raw.abort(1)
    assert reply["ok"] == 0 and reply["code"] == 256
    assert TRANSIENT not in reply.get("errorLabels", [])


def test_commit_after_abort_is_no_such_transaction(
        raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    raw.in_txn({"insert": "items", "documents": [{"_id": 1}]}, 1, start=True)
    assert raw.abort(1)["ok"] == 1
    reply = raw.commit(1)
    assert reply["ok"] == 0 and reply["code"] == 251
    assert TRANSIENT in reply["errorLabels"]
    again = raw.abort(1)
    assert again["code"] == 251
    assert items.find_one({"_id": 1}) is None


def test_statement_after_commit_or_abort_fails(raw: RawSession) -> None:
    raw.in_txn({"insert": "items", "documents": [{"_id": 1}]}, 1, start=True)
    raw.commit(1)
    after_commit = raw.in_txn({"find": "items"}, 1)
    assert after_commit["ok"] == 0 and after_commit["code"] == 256
    raw.in_txn({"insert": "items", "documents": [{"_id": 2}]}, 2, start=True)
    raw.abort(2)
    after_abort = raw.in_txn({"find": "items"}, 2)
    assert after_abort["code"] == 251 and TRANSIENT in after_abort["errorLabels"]


def test_unknown_and_old_transaction_numbers(raw: RawSession) -> None:
    never_started = raw.in_txn({"find": "items"}, 7)
    assert never_started["code"] == 251 and TRANSIENT in never_started["errorLabels"]
    assert raw.commit(7)["code"] == 251
    assert raw.in_txn({"insert": "items", "documents": [{"_id": 1}]}, 5, start=True)["ok"]
    older = raw.in_txn({"insert": "items", "documents": [{"_id": 2}]}, 4, start=True)
    assert older["ok"] == 0 and older["code"] == 225
    assert raw.commit(4)["code"] == 225
    # The open transaction 5 was not disturbed by the rejected ones.
    assert raw.commit(5)["ok"] == 1


def test_a_newer_transaction_aborts_the_open_one(
        raw: RawSession, items: Collection[dict[str, Any]]) -> None:
    raw.in_txn({"insert": "items", "documents": [{"_id": "first"}]}, 1, start=True)
    raw.in_txn({"insert": "items", "documents": [{"_id": "second"}]}, 2, start=True)
    assert raw.commit(1)["code"] == 225
    assert raw.commit(2)["ok"] == 1
    assert items.find_one({"_id": "first"}) is None
    assert items.find_one({"_id": "second"}) == {"_id": "second"}


def test_a_retryable_write_with_a_newer_number_aborts_the_open_transaction(
        client: MongoClient[dict[str, Any]], raw: RawSession,
        items: Collection[dict[str, Any]]) -> None:
    raw.in_txn({"update": "items", "updates": [{"q": {"_id": "existing"},
                                                "u": {"$set": {"n": "txn"}}}]}, 1, start=True)
    reply = raw.run({"insert": "items", "documents": [{"_id": "plain"}]}, 2)
    assert reply["ok"] == 1 and reply["n"] == 1
    assert raw.commit(1)["code"] == 225
    # The aborted transaction's document lock was released.
    with client.start_session() as session, session.start_transaction():
        items.update_one({"_id": "existing"}, {"$set": {"n": "other"}}, session=session)
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": "other"}


def test_starting_a_used_transaction_number_again_fails(raw: RawSession) -> None:
    raw.in_txn({"insert": "items", "documents": [{"_id": 1}]}, 3, start=True)
    again = raw.in_txn({"insert": "items", "documents": [{"_id": 2}]}, 3, start=True)
    assert again["ok"] == 0
    assert raw.commit(3)["ok"] == 1  # the first one is still intact
    restart = raw.in_txn({"insert": "items", "documents": [{"_id": 3}]}, 3, start=True)
    assert restart["ok"] == 0 and restart["code"] == 256


def test_option_rules(raw: RawSession) -> None:
    with_wc = raw.in_txn({"insert": "items", "documents": [{"_id": 1}],
                          "writeConcern": {"w": 1}}, 1, start=True)
    assert with_wc["ok"] == 0 and with_wc["code"] == 72
    no_autocommit = raw.run({"insert": "items", "documents": [{"_id": 1}]}, 2,
                            startTransaction=True)
    assert no_autocommit["ok"] == 0
    assert raw.in_txn({"insert": "items", "documents": [{"_id": 1}]}, 3, start=True)["ok"]
    later_read_concern = raw.run({"find": "items"}, 3, autocommit=False,
                                 readConcern={"level": "snapshot"})
    assert later_read_concern["ok"] == 0 and later_read_concern["code"] == 72


def test_an_error_inside_a_transaction_aborts_it(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    with client.start_session() as session:
        session.start_transaction()
        items.insert_one({"_id": "kept?"}, session=session)
        with pytest.raises(OperationFailure) as info:
            items.insert_one({"_id": "existing"}, session=session)  # duplicate key
        assert info.value.code == 11000
        with pytest.raises(OperationFailure) as after:
            items.insert_one({"_id": "more"}, session=session)
        assert after.value.code == 251
        assert after.value.has_error_label(TRANSIENT)
        session.abort_transaction()
    assert items.find_one({"_id": "kept?"}) is None


def test_commands_not_allowed_in_transactions(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    with client.start_session() as session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as info:
            items.database.command("count", "items", session=session)
        assert info.value.code == 263
        session.abort_transaction()


# -- conflicts and with_transaction ----------------------------------------------------------


def test_write_conflict_between_two_transactions(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    first, second = client.start_session(), client.start_session()
    try:
        first.start_transaction()
        second.start_transaction()
        items.update_one({"_id": "existing"}, {"$inc": {"n": 1}}, session=first)
        with pytest.raises(OperationFailure) as info:
            items.update_one({"_id": "existing"}, {"$inc": {"n": 10}}, session=second)
        assert info.value.code == 112
        assert info.value.has_error_label(TRANSIENT)
        # The loser was aborted; the winner commits.
        with pytest.raises(OperationFailure) as after:
            items.find_one({}, session=second)
        assert after.value.code == 251
        second.abort_transaction()
        first.commit_transaction()
    finally:
        first.end_session()
        second.end_session()
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 1}


def test_insert_conflict_on_the_same_new_id(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    first, second = client.start_session(), client.start_session()
    try:
        first.start_transaction()
        second.start_transaction()
        items.insert_one({"_id": "new", "by": "first"}, session=first)
        with pytest.raises(OperationFailure) as info:
            items.insert_one({"_id": "new", "by": "second"}, session=second)
        assert info.value.code == 112 and info.value.has_error_label(TRANSIENT)
        second.abort_transaction()
        first.commit_transaction()
    finally:
        first.end_session()
        second.end_session()
    assert items.find_one({"_id": "new"}) == {"_id": "new", "by": "first"}


@pytest.mark.embedded_only
def test_outside_write_to_a_transaction_document_fails_the_commit(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    """MongoDB would make the outside write wait for the transaction; here it goes first and the
    transaction loses at commit with a retryable WriteConflict."""
    with client.start_session() as session:
        session.start_transaction()
        items.update_one({"_id": "existing"}, {"$set": {"n": "txn"}}, session=session)
        items.update_one({"_id": "existing"}, {"$set": {"n": "outside"}})
        with pytest.raises(OperationFailure) as info:
            session.commit_transaction()
        assert info.value.code == 112 and info.value.has_error_label(TRANSIENT)
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": "outside"}


def test_with_transaction_commits_the_callback(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    def callback(session: ClientSession) -> int:
        items.insert_one({"_id": "cb1"}, session=session)
        items.update_one({"_id": "existing"}, {"$inc": {"n": 5}}, session=session)
        return 42

    with client.start_session() as session:
        assert session.with_transaction(callback) == 42
    assert items.find_one({"_id": "cb1"}) == {"_id": "cb1"}
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 5}


def test_with_transaction_retries_after_a_transient_error(
        mongodb_uri: str, client: MongoClient[dict[str, Any]],
        items: Collection[dict[str, Any]]) -> None:
    app = "txn-retry-test"
    recorder = CommandRecorder()
    retrying: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, appname=app,
                                                        event_listeners=[recorder])
    coll = retrying[items.database.name].items
    calls = []

    def callback(session: ClientSession) -> None:
        calls.append(1)
        coll.insert_one({"_id": "retried"}, session=session)
        coll.update_one({"_id": "existing"}, {"$inc": {"n": 1}}, session=session)

    try:
        # The first insert fails with a WriteConflict; the server labels it transient, so
        # with_transaction runs the whole callback again in a new transaction.
        with fail_point(client, "failCommand", {"times": 1},
                        {"failCommands": ["insert"], "errorCode": 112, "appName": app}), \
                retrying.start_session() as session:
            session.with_transaction(callback)
    finally:
        retrying.close()
    assert len(calls) == 2
    failures = recorder.failures_of("insert")
    assert len(failures) == 1
    assert TRANSIENT in failures[0].get("errorLabels", [])
    assert items.count_documents({"_id": "retried"}) == 1
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 1}


def test_with_transaction_retries_commit_after_a_dropped_connection(
        mongodb_uri: str, client: MongoClient[dict[str, Any]],
        items: Collection[dict[str, Any]]) -> None:
    app = "txn-commit-retry-test"
    recorder = CommandRecorder()
    retrying: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, appname=app,
                                                        event_listeners=[recorder])
    coll = retrying[items.database.name].items
    try:
        with fail_point(client, "failCommand", {"times": 1},
                        {"failCommands": ["commitTransaction"], "closeConnection": True,
                         "appName": app}), retrying.start_session() as session:
            session.with_transaction(
                lambda s: coll.update_one({"_id": "existing"}, {"$inc": {"n": 1}}, session=s))
    finally:
        retrying.close()
    commits = recorder.named("commitTransaction")
    assert len(commits) == 2
    assert commits[0]["txnNumber"] == commits[1]["txnNumber"]
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 1}


async def test_async_with_transaction_and_abort(mongodb_uri: str,
                                                items: Collection[dict[str, Any]]) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri)
    coll = client[items.database.name].items
    try:
        async def callback(session: Any) -> None:
            await coll.insert_one({"_id": "async1"}, session=session)
            assert await coll.count_documents({"_id": "async1"}) == 0  # outside
            assert await coll.count_documents({"_id": "async1"}, session=session) == 1

        async with client.start_session() as session:
            await session.with_transaction(callback)
            await session.start_transaction()
            await coll.insert_one({"_id": "async2"}, session=session)
            await session.abort_transaction()
        assert await coll.find_one({"_id": "async1"}) == {"_id": "async1"}
        assert await coll.find_one({"_id": "async2"}) is None
    finally:
        await client.close()


# -- lifetime -----------------------------------------------------------------------------------


def test_transactions_older_than_the_lifetime_limit_are_aborted(
        fresh_server: ServerFactory) -> None:
    server = fresh_server(in_memory=True)
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    try:
        assert client.admin.command(
            {"getParameter": 1, "transactionLifetimeLimitSeconds": 1}
        )["transactionLifetimeLimitSeconds"] == 60
        client.admin.command({"setParameter": 1, "transactionLifetimeLimitSeconds": 1})
        items = client.db.items
        items.insert_one({"_id": 1, "n": 0})
        session = client.start_session()
        session.start_transaction()
        items.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=session)

        def aborted() -> bool:
            try:
                items.find_one({"_id": 1}, session=session)
            except OperationFailure as exc:
                assert exc.code == 251 and exc.has_error_label(TRANSIENT)
                return True
            return False

        wait_until(aborted, timeout=15, interval=0.1, message="transaction reaped")
        session.end_session()
        # Its lock is released: another transaction can write the document.
        with client.start_session() as other, other.start_transaction():
            items.update_one({"_id": 1}, {"$inc": {"n": 10}}, session=other)
        assert items.find_one({"_id": 1}) == {"_id": 1, "n": 10}
    finally:
        client.close()


# -- reads of the transaction's own writes, and commit atomicity --------------------------------


def test_transaction_reads_its_own_writes_through_an_index(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    items.create_index("a")
    items.insert_many([{"_id": 1, "a": 1}, {"_id": 2, "a": 2}])
    with client.start_session() as session:
        session.start_transaction()
        items.update_one({"_id": 1}, {"$set": {"a": 5}}, session=session)
        items.insert_one({"_id": 3, "a": 5}, session=session)
        items.delete_one({"_id": 2}, session=session)
        assert [d["_id"] for d in items.find({"a": 5}, session=session).sort("_id", 1)] == [1, 3]
        assert list(items.find({"a": 1}, session=session)) == []
        assert list(items.find({"a": {"$gte": 2}}, session=session).sort("a", -1)) == [
            {"_id": 1, "a": 5}, {"_id": 3, "a": 5}]
        assert items.find_one({"a": 2}, session=session) is None
        # Outside, the index still answers with the committed state.
        assert items.find_one({"a": 2}) == {"_id": 2, "a": 2}
        assert items.find_one({"a": 5}) is None
        session.commit_transaction()
    assert [d["_id"] for d in items.find({"a": 5}).sort("_id", 1)] == [1, 3]


@pytest.mark.embedded_only
def test_dropping_the_collection_under_a_transaction_fails_its_commit(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    """MongoDB would make the drop wait; here the drop wins and the commit must fail rather
    than report success for writes that went nowhere."""
    with client.start_session() as session:
        session.start_transaction()
        items.insert_one({"_id": "in-txn"}, session=session)
        items.drop()
        with pytest.raises(OperationFailure) as info:
            session.commit_transaction()
        assert info.value.code == 112 and info.value.has_error_label(TRANSIENT)
    assert items.find_one({"_id": "in-txn"}) is None


@pytest.mark.embedded_only
def test_a_commit_that_fails_half_way_applies_nothing(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    items.create_index("email", unique=True, sparse=True)
    with items.watch(max_await_time_ms=200) as stream, client.start_session() as session:
        session.start_transaction()
        items.insert_one({"_id": "a", "email": "a@x"}, session=session)
        items.update_one({"_id": "existing"}, {"$set": {"n": 7}}, session=session)
        items.insert_one({"_id": "b", "email": "b@x"}, session=session)
        # Outside the transaction another writer takes b's unique email first.
        items.insert_one({"_id": "c", "email": "b@x"})
        with pytest.raises(OperationFailure) as info:
            session.commit_transaction()
        assert info.value.code == 11000 and info.value.has_error_label(TRANSIENT)
        items.insert_one({"_id": "marker"})
        events = _drain(stream, "marker")
    assert [e["documentKey"]["_id"] for e in events] == ["c", "marker"]
    assert items.find_one({"_id": "a"}) is None
    assert items.find_one({"_id": "b"}) is None
    assert items.find_one({"_id": "existing"}) == {"_id": "existing", "n": 0}
    assert items.find_one({"email": "a@x"}) is None  # the index was restored too
    items.insert_one({"_id": "a2", "email": "a@x"})
