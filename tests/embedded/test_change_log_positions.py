"""The change log's reads by position (in process): ``after`` and ``get`` return the same
entries whether sequence numbers are consecutive (arithmetic) or not (bisection), from the
head or the tail of a long log, and across evictions."""

from __future__ import annotations

import datetime

from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

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
