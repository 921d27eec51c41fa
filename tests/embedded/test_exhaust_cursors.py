"""Exhaust cursors (OP_MSG specification, "exhaustAllowed" and "moreToCome").

A ``getMore`` sent with the exhaustAllowed flag may be answered with a stream of replies:
every batch but the last carries moreToCome, and each answers the previous reply's requestID,
so the driver reads the whole cursor without sending more getMores. PyMongo's
``CursorType.EXHAUST`` uses this; the raw test checks the bytes.
"""

from __future__ import annotations

from typing import Any

from pymongo import CursorType, monitoring
from pymongo.database import Database
from raw_wire import RawConnection, op_msg

FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16


def test_exhaust_get_more_streams_every_batch(db: Database[dict[str, Any]],
                                              mongodb_uri: str) -> None:
    """One getMore with exhaustAllowed: a reply per 10 documents for the 50 remaining, the
    last without moreToCome and with cursor id 0, chained by responseTo."""
    db.items.insert_many([{"_id": i} for i in range(60)])
    with RawConnection(mongodb_uri) as conn:
        first = conn.command({"find": "items", "batchSize": 10, "sort": {"_id": 1},
                              "$db": db.name})
        cursor_id = first["cursor"]["id"]
        conn.send(op_msg({"getMore": cursor_id, "collection": "items", "batchSize": 10,
                          "$db": db.name}, request_id=77, flags=FLAG_EXHAUST_ALLOWED))
        seen: list[int] = []
        previous = 77
        replies = 0
        while True:
            reply = conn.read_reply()
            assert reply is not None
            assert reply.response_to == previous
            previous = reply.request_id
            replies += 1
            seen += [d["_id"] for d in reply.doc["cursor"]["nextBatch"]]
            if not reply.flags & FLAG_MORE_TO_COME:
                assert reply.doc["cursor"]["id"] == 0
                break
        assert replies in (5, 6)  # a last empty batch when the end is found only then
        assert seen == list(range(10, 60))
        assert conn.command({"ping": 1, "$db": "admin"})["ok"] == 1.0  # usable again


def test_pymongo_exhaust_cursor_reads_everything_with_one_get_more(
        db: Database[dict[str, Any]], mongodb_uri: str) -> None:
    """PyMongo's exhaust cursor sends a single getMore and still gets every document."""
    from pymongo import MongoClient

    class GetMores(monitoring.CommandListener):
        def __init__(self) -> None:
            self.sent = 0

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "getMore":
                self.sent += 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    db.items.insert_many([{"_id": i} for i in range(300)])
    listener = GetMores()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[listener])
    try:
        docs = list(client[db.name].items.find(cursor_type=CursorType.EXHAUST).batch_size(20))
        assert sorted(d["_id"] for d in docs) == list(range(300))
    finally:
        client.close()
    assert listener.sent >= 1
