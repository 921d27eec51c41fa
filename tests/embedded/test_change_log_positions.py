"""The change log's reads by position (in process): ``after`` and ``get`` return the same
entries whether sequence numbers are consecutive (arithmetic) or not (bisection), from the
head or the tail of a long log, and across evictions."""

from __future__ import annotations

import datetime
from typing import Any

from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.database import Database

from runtime.embedded.change_streams import SCAN_CHUNK
from runtime.embedded.changelog import ChangeEntry, ChangeLog


def _entry(seq: int = 0) -> ChangeEntry:
    return ChangeEntry(op="insert", db="d", coll="c", cluster_time=Timestamp(1, seq or 1),
                       wall_time=datetime.datetime(2030, 1, 1), seq=seq, size=100)


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 300), gaps=st.booleans(), evict=st.integers(0, 250),
       probe=st.integers(-5, 1_000))
def test_after_and_get_match_a_plain_scan(count: int, gaps: bool, evict: int,
                                          probe: int) -> None:
    log = ChangeLog(max_bytes=100 * (count - min(evict, count - 1)))
    if gaps:  # sequence numbers given, not assigned: not consecutive
        log.append([_entry(seq) for seq in range(3, 3 * count + 3, 3)], assign=False)
    else:
        log.append([_entry() for _ in range(count)])
    kept = list(log.entries)
    expected = [e.seq for e in kept if e.seq > probe]
    assert [e.seq for e in log.after(probe)] == expected
    found = log.get(probe)
    assert (found.seq if found else None) == next((e.seq for e in kept if e.seq == probe),
                                                  None)


def test_a_stream_reads_past_a_long_filtered_backlog_in_one_get_more(
        db: Database[dict[str, Any]]) -> None:
    """More log entries than one read looks at (``SCAN_CHUNK``) belong to another collection:
    the getMore reads them chunk by chunk (yielding to other clients in between) and still
    returns the one event of its own collection."""
    with db.watched.watch(max_await_time_ms=5_000) as stream:
        for start in range(0, SCAN_CHUNK * 2 + 500, 1_000):
            db.other.insert_many([{"_id": i} for i in range(start, start + 1_000)])
        db.watched.insert_one({"_id": "mine"})
        event = stream.next()
    assert event["operationType"] == "insert" and event["documentKey"] == {"_id": "mine"}
