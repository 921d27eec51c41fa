"""Long reads do not hold up other clients (issue 12).

MongoDB yields a long-running query every so often (``internalQueryExecYieldIterations``,
``internalQueryExecYieldPeriodMS``), so other operations run while it scans; a document read
after a yield is its latest committed version, and a cursor never returns a document twice
while it has not changed (for an unchanged document, exactly once). The embedded server reads
long scans in slices and yields its event loop between them (``runtime/embedded/scans.py``).

How "completes while the long read is running" is shown without timing thresholds: the server
counts the index keys and documents every read examines (``serverStatus`` ->
``metrics.queryExecutor``). A long read runs in a thread; once the counters move (the read has
started), another client's quick command completes, and then the counters move again (the long
read examined more documents after the quick command had completed) before the long read's
thread reports that it is done. A server that ran the long read to its end before anything
else could never show the second move.

Embedded only: one server of this module's own holds a collection of ``N`` documents.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import ExecutionTimeout, OperationFailure
from support import wait_until

from runtime.embedded.process import EmbeddedServer

pytestmark = pytest.mark.embedded_only

Client = MongoClient[dict[str, Any]]
Coll = Collection[dict[str, Any]]

N = 200_000
MOVE = 10**9  # added to ``y`` by the concurrent updates: still matches ``y >= 0``


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    """An in-memory server with ``t.data``: ``{_id: i, x: i, y: i}`` for ``i < N``, ``y``
    indexed, and ``t.tasks``: pending tasks for claims."""
    with EmbeddedServer() as embedded, MongoClient(embedded.uri) as loader:
        data = loader["t"]["data"]
        for first in range(0, N, 10_000):
            data.insert_many([{"_id": i, "x": i, "y": i}
                              for i in range(first, min(N, first + 10_000))], ordered=False)
        data.create_index("y")
        tasks = loader["t"]["tasks"]
        tasks.create_index([("status", ASCENDING), ("due", ASCENDING)])
        tasks.insert_many([{"status": "pending", "due": i} for i in range(100)])
        yield embedded


@pytest.fixture
def other(server: EmbeddedServer) -> Iterator[Client]:
    """The client whose commands must not wait for the long read."""
    with MongoClient(server.uri) as mongo:
        mongo.admin.command("ping")
        yield mongo


def examined(mongo: Client) -> int:
    """Index keys plus documents examined by every read since the server started."""
    counters = mongo.admin.command("serverStatus")["metrics"]["queryExecutor"]
    return int(counters["scanned"]) + int(counters["scannedObjects"])


class LongRead:
    """Runs ``read(collection)`` on a connection of its own, in a thread."""

    def __init__(self, server: EmbeddedServer, read: Callable[[Coll], Any]) -> None:
        self._client: Client = MongoClient(server.uri)
        self._client.admin.command("ping")
        self._read = read
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._read(self._client["t"]["data"])
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.done.set()

    def __enter__(self) -> LongRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=120)
        self._client.close()

    def start(self, watcher: Client) -> None:
        """Start the read and return once the server is running it."""
        before = examined(watcher)
        self._thread.start()
        wait_until(lambda: self.done.is_set() or examined(watcher) > before, timeout=60,
                   message="the long read started")
        assert not self.done.is_set(), "the long read ended before anything else could run"

    def finish(self) -> Any:
        """Wait for the read; its result."""
        assert self.done.wait(timeout=120), "the long read did not end"
        if self.error is not None:
            raise self.error
        return self.result


def assert_ran_during(long_read: LongRead, watcher: Client, action: Callable[[], Any]) -> Any:
    """Run ``action`` while ``long_read`` runs, and show that the read went on afterwards."""
    result = action()
    after = examined(watcher)  # the action's own examined keys/documents are included
    assert not long_read.done.is_set(), "the long read ended before the quick command did"
    wait_until(lambda: examined(watcher) > after or long_read.done.is_set(), timeout=60)
    assert examined(watcher) > after, "the long read made no progress after the quick command"
    return result


def test_indexed_reads_and_claims_complete_while_a_count_runs(
        server: EmbeddedServer, other: Client) -> None:
    # count_documents sends aggregate [$match, $group {_id: 1, n: {$sum: 1}}]
    with LongRead(server, lambda data: data.count_documents({"x": {"$gte": 0}})) as count:
        count.start(other)
        doc = assert_ran_during(count, other, lambda: other["t"]["data"].find_one({"_id": 7}))
        assert doc == {"_id": 7, "x": 7, "y": 7}
        claimed = assert_ran_during(count, other, lambda: other["t"]["tasks"].find_one_and_update(
            {"status": "pending", "due": {"$lte": 1000}}, {"$set": {"status": "running"}},
            sort=[("due", ASCENDING)], return_document=ReturnDocument.AFTER))
        assert claimed is not None and claimed["status"] == "running"
        assert count.finish() == N


def test_count_command_and_unindexed_find_let_others_in(
        server: EmbeddedServer, other: Client) -> None:
    with LongRead(server, lambda data: data.database.command(
            "count", "data", query={"x": {"$gte": 0}})["n"]) as count:
        count.start(other)
        assert assert_ran_during(count, other, lambda: other["t"]["data"].find_one({"y": 9}))
        assert count.finish() == N
    with LongRead(server, lambda data: data.find({"x": {"$lt": 0}}).to_list()) as find:
        find.start(other)
        assert assert_ran_during(find, other, lambda: other["t"]["data"].find_one({"_id": 3}))
        assert find.finish() == []
    # A sort no index gives: the scan sorts slice by slice and merges the sorted runs.
    with LongRead(server, lambda data: data.find({"x": {"$gte": 0}}, {"y": 0}).sort(
            "x", -1).skip(2).limit(3).to_list()) as top:
        top.start(other)
        assert assert_ran_during(top, other, lambda: other["t"]["data"].find_one({"_id": 4}))
        assert top.finish() == [{"_id": i, "x": i} for i in (N - 3, N - 4, N - 5)]


def test_writes_during_a_collection_scan_and_an_index_scan_do_not_break_them(
        server: EmbeddedServer, other: Client) -> None:
    data = other["t"]["data"]
    for query in ({"x": {"$gte": 0}}, {"y": {"$gte": 0}}):  # unindexed, then an index scan
        with LongRead(server, lambda coll, q=query: coll.count_documents(q)) as count:
            count.start(other)

            def move(first: int) -> None:
                # Updates that move documents forward in the y index (a scan that read the
                # live index could meet them twice) and inserts the scan must not trip on.
                ids = list(range(first, first + 50))
                data.update_many({"_id": {"$in": ids}}, {"$inc": {"y": MOVE}})
                data.insert_many([{"x": -1, "y": MOVE + i} for i in ids])

            assert_ran_during(count, other, lambda: move(0))
            moved = 50
            while not count.done.is_set() and moved < N:
                move(moved)
                moved += 50
            # Every document existed throughout and still matches: each counted exactly once;
            # the inserted ones came after the read started (x = -1 fails the first filter,
            # and the index scan reads the entries of when it started).
            assert count.finish() == N
        data.delete_many({"x": -1})
        data.update_many({"y": {"$gte": MOVE}}, {"$inc": {"y": -MOVE}})
    assert data.count_documents({}) == N


def test_get_more_over_a_large_cursor_with_writes_between_batches(
        server: EmbeddedServer, other: Client) -> None:
    data = other["t"]["data"]
    with MongoClient(server.uri) as reader:
        cursor = reader["t"]["data"].find({"y": {"$gte": 0}}, batch_size=5_000).sort("y", 1)
        seen: list[int] = []
        for doc in cursor:
            seen.append(doc["_id"])
            if len(seen) % 5_000 == 0 and len(seen) < 50_000:
                # between two getMores: move documents the cursor has not reached yet past
                # the end of the index, delete one, and insert new ones
                ahead = list(range(len(seen) + 10_000, len(seen) + 10_100))
                data.update_many({"_id": {"$in": ahead}}, {"$inc": {"y": MOVE}})
                data.insert_many([{"x": -1, "y": len(seen) + j} for j in range(10)])
        assert len(seen) == len(set(seen)), "a document was returned twice"
        assert len(seen) == N  # read from the index as it was at the first batch
    data.delete_many({"x": -1})
    data.update_many({"y": {"$gte": MOVE}}, {"$inc": {"y": -MOVE}})


def test_aggregate_with_group_and_distinct_let_others_in(
        server: EmbeddedServer, other: Client) -> None:
    # The stages after the leading $match that work document by document run on each slice of
    # the scan; $group then sums what they let through.
    pipeline: list[dict[str, Any]] = [{"$match": {"x": {"$gte": 0}}},
                                      {"$project": {"x": 1}},
                                      {"$match": {"x": {"$lt": 1000}}},
                                      {"$group": {"_id": None, "total": {"$sum": "$x"}}}]
    with LongRead(server, lambda data: data.aggregate(pipeline).to_list()) as aggregate:
        aggregate.start(other)
        assert assert_ran_during(aggregate, other,
                                 lambda: other["t"]["data"].find_one({"_id": 11}))
        assert aggregate.finish() == [{"_id": None, "total": 1000 * 999 // 2}]
    with LongRead(server, lambda data: data.distinct("x", {"x": {"$mod": [1000, 0]}})) \
            as distinct:
        distinct.start(other)
        assert assert_ran_during(distinct, other,
                                 lambda: other["t"]["data"].find_one({"_id": 12}))
        assert distinct.finish() == list(range(0, N, 1000))


def test_max_time_ms_still_ends_a_long_read(other: Client) -> None:
    # MaxTimeMSExpired (50) ends the read; the time spent letting others in counts too.
    with pytest.raises(ExecutionTimeout):
        other["t"]["data"].count_documents({"x": {"$gte": 0}}, maxTimeMS=5)
    with pytest.raises(ExecutionTimeout):
        other["t"]["data"].find({"x": {"$lt": 0}}, max_time_ms=5).to_list()
    assert other["t"]["data"].find_one({"_id": 1}) is not None


def test_a_second_get_more_on_a_cursor_that_is_still_reading_is_cursor_in_use(
        server: EmbeddedServer, other: Client) -> None:
    # mongod pins a cursor to the operation using it: another getMore meanwhile fails with
    # CursorInUse (143) "cursor id ... is already in use", and the first one is unaffected.
    with MongoClient(server.uri) as reader:
        db = reader["t"]
        first = db.command("find", "data", filter={"$or": [{"x": {"$lt": 5}},
                                                            {"x": {"$gte": N - 5}}]},
                           batchSize=5)
        assert [d["_id"] for d in first["cursor"]["firstBatch"]] == list(range(5))
        cursor_id = first["cursor"]["id"]
        # The next batch lies at the far end of the collection: the getMore scans it all.
        with LongRead(server, lambda data: data.database.command(
                "getMore", cursor_id, collection="data", batchSize=5)) as get_more:
            get_more.start(other)
            with pytest.raises(OperationFailure) as refused:
                assert_ran_during(get_more, other, lambda: other["t"].command(
                    "getMore", cursor_id, collection="data"))
            assert refused.value.code == 143
            reply = get_more.finish()
        assert [d["_id"] for d in reply["cursor"]["nextBatch"]] == list(range(N - 5, N))
