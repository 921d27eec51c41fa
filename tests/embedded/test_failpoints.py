"""``configureFailPoint``: failures on demand, only with --enable-test-commands.

Every fail point here names the test client's ``appName`` (where the fail point supports it),
so other clients of the shared server are never affected, and is always switched off again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from failpoint_helpers import CommandRecorder, fail_point
from pymongo import MongoClient, monitoring
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure
from support import ServerFactory


@pytest.fixture
def items(db: Database[dict[str, Any]]) -> Collection[dict[str, Any]]:
    coll = db.items
    coll.insert_many([{"_id": i} for i in range(10)])
    return coll


@pytest.fixture
def app_client(mongodb_uri: str, request: pytest.FixtureRequest) -> Iterator[
        tuple[MongoClient[dict[str, Any]], CommandRecorder, str]]:
    app = f"fp-{request.node.name}"[:100]
    recorder = CommandRecorder()
    client: MongoClient[dict[str, Any]] = MongoClient(
        mongodb_uri, appname=app, event_listeners=[recorder], retryReads=False,
        retryWrites=False)
    try:
        yield client, recorder, app
    finally:
        client.close()


def test_fail_points_need_enable_test_commands(fresh_server: ServerFactory) -> None:
    server = fresh_server(in_memory=True, enable_test_commands=False)
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    try:
        with pytest.raises(OperationFailure) as info:
            client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                  "data": {"failCommands": ["find"], "errorCode": 2}})
        assert info.value.code == 59
        assert client.admin.command({"getParameter": 1, "enableTestCommands": 1})[
            "enableTestCommands"] is False
        assert client.db.items.find_one() is None  # nothing was configured
    finally:
        client.close()


@pytest.mark.embedded_only
def test_enabled_test_commands_are_reported(client: MongoClient[dict[str, Any]]) -> None:
    assert client.admin.command({"getParameter": 1, "enableTestCommands": 1})[
        "enableTestCommands"] is True


def test_fail_point_only_on_admin(client: MongoClient[dict[str, Any]]) -> None:
    with pytest.raises(OperationFailure) as info:
        client.test.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert info.value.code in (13, 59)


def test_error_code_times(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, _recorder, app = app_client
    coll = failing[items.database.name].items
    with fail_point(client, "failCommand", {"times": 2},
                    {"failCommands": ["find"], "errorCode": 2, "appName": app}):
        for _ in range(2):
            with pytest.raises(OperationFailure) as info:
                coll.find_one({"_id": 1})
            assert info.value.code == 2
            assert info.value.details is not None and info.value.details["errmsg"]
        assert coll.find_one({"_id": 1}) == {"_id": 1}
    # Other clients were never affected.
    assert items.find_one({"_id": 1}) == {"_id": 1}


def test_always_on_until_off(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, _recorder, app = app_client
    coll = failing[items.database.name].items
    with fail_point(client, "failCommand", "alwaysOn",
                    {"failCommands": ["insert", "count"], "errorCode": 14, "appName": app}):
        for i in range(3):
            with pytest.raises(OperationFailure) as info:
                coll.insert_one({"_id": f"x{i}"})
            assert info.value.code == 14
        with pytest.raises(OperationFailure):
            coll.estimated_document_count()
        assert coll.find_one({"_id": 2}) == {"_id": 2}  # find is not listed
    coll.insert_one({"_id": "after"})
    assert items.count_documents({"_id": {"$regex": "^x"}}) == 0
    assert items.find_one({"_id": "after"}) == {"_id": "after"}


def test_skip_mode(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, _recorder, app = app_client
    coll = failing[items.database.name].items
    with fail_point(client, "failCommand", {"skip": 2},
                    {"failCommands": ["find"], "errorCode": 2, "appName": app}):
        assert coll.find_one({"_id": 1}) is not None
        assert coll.find_one({"_id": 2}) is not None
        with pytest.raises(OperationFailure):
            coll.find_one({"_id": 3})


def test_error_labels_are_passed_through(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, _recorder, app = app_client
    coll = failing[items.database.name].items
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["find"], "errorCode": 2,
                     "errorLabels": ["SomeLabel", "Another"], "appName": app}), \
            pytest.raises(OperationFailure) as info:
        coll.find_one({})
    assert info.value.has_error_label("SomeLabel") and info.value.has_error_label("Another")


def test_get_more_fails_on_demand(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, recorder, app = app_client
    coll = failing[items.database.name].items
    cursor = coll.find({}, batch_size=3).sort("_id", 1)
    first = [next(cursor) for _ in range(3)]
    assert [d["_id"] for d in first] == [0, 1, 2]
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["getMore"], "errorCode": 2, "appName": app}), \
            pytest.raises(OperationFailure) as info:
        next(cursor)
    assert info.value.code == 2
    assert len(recorder.named("getMore")) == 1
    # A new query works again.
    assert coll.count_documents({}) == 10


def test_close_connection_on_find_is_retried_by_the_driver(
        mongodb_uri: str, client: MongoClient[dict[str, Any]],
        items: Collection[dict[str, Any]]) -> None:
    app = "fp-retry-read"
    recorder = CommandRecorder()
    reader: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, appname=app,
                                                      event_listeners=[recorder])
    try:
        with fail_point(client, "failCommand", {"times": 1},
                        {"failCommands": ["find"], "closeConnection": True, "appName": app}):
            assert reader[items.database.name].items.find_one({"_id": 4}) == {"_id": 4}
    finally:
        reader.close()
    assert len(recorder.named("find")) == 2
    assert len(recorder.failures_of("find")) == 1


def test_block_connection_delays_the_command(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, _recorder, app = app_client
    coll = failing[items.database.name].items
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["find"], "blockConnection": True, "blockTimeMS": 300,
                     "appName": app}):
        started = time.monotonic()
        assert coll.find_one({"_id": 5}) == {"_id": 5}
        elapsed = time.monotonic() - started
    assert elapsed >= 0.3


def test_app_name_filter(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, _recorder, app = app_client
    with fail_point(client, "failCommand", "alwaysOn",
                    {"failCommands": ["find"], "errorCode": 2, "appName": app + "-other"}):
        assert failing[items.database.name].items.find_one({"_id": 1}) == {"_id": 1}


@pytest.mark.embedded_only
def test_change_stream_resumes_after_a_failed_get_more(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]]) -> None:
    with items.watch(max_await_time_ms=100) as stream:
        items.insert_one({"_id": "before"})
        assert stream.next()["documentKey"] == {"_id": "before"}
        with fail_point(client, "failGetMoreAfterCursorCheckout", {"times": 1},
                        {"errorCode": 43}):  # CursorNotFound: resumable
            items.insert_one({"_id": "after"})
            assert stream.next()["documentKey"] == {"_id": "after"}


@pytest.mark.embedded_only
@pytest.mark.parametrize(("command", "code"), [
    ({"configureFailPoint": "noSuchFailPoint", "mode": "alwaysOn"}, 2),
    ({"configureFailPoint": "failCommand", "mode": "sometimes",
      "data": {"failCommands": ["find"]}}, 9),
    ({"configureFailPoint": "failCommand", "mode": {"times": -1},
      "data": {"failCommands": ["find"]}}, 2),
    ({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {"errorCode": 2}}, 2),
    ({"configureFailPoint": "failCommand", "mode": "alwaysOn",
      "data": {"failCommands": "find"}}, 2),
    ({"configureFailPoint": "failCommand", "mode": "alwaysOn",
      "data": {"failCommands": ["find"], "errorLabels": "x"}}, 14),
    ({"configureFailPoint": "failCommand", "mode": "alwaysOn",
      "data": {"failCommands": ["find"], "errorCode": "two"}}, 2),
])
def test_invalid_fail_point_commands(client: MongoClient[dict[str, Any]],
                                     command: dict[str, Any], code: int) -> None:
    with pytest.raises(OperationFailure) as info:
        client.admin.command(command)
    assert info.value.code == code
    # Nothing stays configured after a rejected command.
    assert client.test.command("ping")["ok"] == 1
    client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


@pytest.mark.embedded_only
def test_a_rejected_configuration_keeps_the_active_fail_point(
        client: MongoClient[dict[str, Any]], items: Collection[dict[str, Any]],
        app_client: tuple[MongoClient[dict[str, Any]], CommandRecorder, str]) -> None:
    failing, _recorder, app = app_client
    coll = failing[items.database.name].items
    with fail_point(client, "failCommand", "alwaysOn",
                    {"failCommands": ["find"], "errorCode": 2, "appName": app}) as reply:
        assert reply["ok"] == 1
        with pytest.raises(OperationFailure):
            client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": -1},
                                  "data": {"failCommands": ["find"]}})
        with pytest.raises(OperationFailure) as info:
            coll.find_one({})
        assert info.value.code == 2


class _Heartbeats(monitoring.ServerHeartbeatListener):
    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.successes = 0

    def started(self, event: monitoring.ServerHeartbeatStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.ServerHeartbeatSucceededEvent) -> None:
        self.successes += 1

    def failed(self, event: monitoring.ServerHeartbeatFailedEvent) -> None:
        self.failures.append(event.reply)


def test_fail_the_handshake_of_one_application(
        mongodb_uri: str, client: MongoClient[dict[str, Any]]) -> None:
    """An appName-targeted fail point also catches the handshake that announces the name."""
    app = "fp-handshake"
    heartbeats = _Heartbeats()
    with fail_point(client, "failCommand", {"times": 1},
                    {"failCommands": ["hello", "isMaster", "ismaster"],
                     "closeConnection": True, "appName": app}):
        other: MongoClient[dict[str, Any]] = MongoClient(
            mongodb_uri, appname=app, event_listeners=[heartbeats])
        try:
            assert other.admin.command("ping")["ok"] == 1
        finally:
            other.close()
    assert len(heartbeats.failures) == 1
    assert heartbeats.successes >= 1
    assert client.admin.command("ping")["ok"] == 1


def test_max_time_always_time_out_fails_commands_with_a_time_limit(
        fresh_server: ServerFactory) -> None:
    """``maxTimeAlwaysTimeOut`` (mongod's fail point, used by drivers' suites): a command with
    ``maxTimeMS``, or a getMore of a cursor opened with one, fails with MaxTimeMSExpired (50);
    one without a limit runs."""
    from pymongo.errors import ExecutionTimeout

    server = fresh_server(in_memory=True, enable_test_commands=True)
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    try:
        client.db.items.insert_one({"_id": 1})
        client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut",
                              "mode": "alwaysOn"})
        with pytest.raises(ExecutionTimeout) as info:
            client.db.items.find_one({}, max_time_ms=100_000)
        assert info.value.code == 50
        assert client.db.items.find_one({}) == {"_id": 1}
        client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"})
        assert client.db.items.find_one({}, max_time_ms=100_000) == {"_id": 1}
        # A cursor opened with maxTimeMS keeps its limit: its getMore times out too.
        client.db.items.insert_many([{"_id": i} for i in range(2, 10)])
        cursor = client.db.items.find({}, max_time_ms=100_000, batch_size=2)
        assert next(cursor)["_id"] == 1
        client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut",
                              "mode": "alwaysOn"})
        with pytest.raises(ExecutionTimeout):
            list(cursor)
        client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"})
    finally:
        client.close()
