"""Query planning: which index serves a filter and sort, and in what order to read it.

The planner never decides what matches; it only narrows the candidates (always a superset of the
matches; the filter is re-checked on each) and, when an index's order equals the requested sort
after its equality prefix, streams candidates in sorted order so ``limit`` stops the scan early.
That makes a claim-style ``findAndModify({task, nextRunAt: {$lte: now}}, sort {nextRunAt: 1})``
cost the same on a million documents as on a thousand.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from runtime.embedded.collation import Collation
from runtime.embedded.engine import bson_equal
from runtime.embedded.indexes import Index
from runtime.embedded.ordering import ARRAY, OBJECT, STRING, Key, id_key
from runtime.embedded.query_bounds import (
    EVERYTHING,
    Bounds,
    Interval,
    bounded_scan,
    field_bounds,
    implies,
    is_point,
    point_keys,
    stored_bounds,
)
from runtime.embedded.storage import ID_INDEX, Collection

MAX_POINT_COMBINATIONS = 1000

#: What queries examined since the server started, reported by ``serverStatus`` as
#: ``metrics.queryExecutor`` like MongoDB does: ``scanned`` counts index keys read and
#: ``scannedObjects`` the documents fetched to be checked against a filter (every document of a
#: collection scan). Counting happens as candidates are consumed, so a query that stops at its
#: limit only counts what it read. Tests use it to prove that an index served a query.
QUERY_EXECUTOR: Counter[str] = Counter()

#: The collation of the read being planned, and its filter transformed by that collation (see
#: :class:`~runtime.embedded.collation.CollatedFilter`); set around a read with
#: :func:`collation_scope` so that callers in between (transactions, snapshots) need not pass it.
_SCOPE: ContextVar[tuple[Collation | None, dict[str, Any] | None]] = ContextVar(
    "collation_scope", default=(None, None))


class _Scope:
    """The context manager of :func:`collation_scope` (a class: cheaper than a generator, and
    every update statement enters one)."""

    def __init__(self, collation: Collation | None, bounds_query: dict[str, Any] | None) -> None:
        self._value = (collation, bounds_query)
        self._token: Token[tuple[Collation | None, dict[str, Any] | None]] | None = None

    def __enter__(self) -> None:
        self._token = _SCOPE.set(self._value)

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _SCOPE.reset(self._token)


def collation_scope(collation: Collation | None,
                    bounds_query: dict[str, Any] | None) -> AbstractContextManager[None]:
    """Plan reads inside the block under ``collation`` (``bounds_query``: the filter with its
    strings transformed by it). An index serves string bounds or a sort only when its own
    collation is the read's (MongoDB's rule); other indexes serve only non-string bounds."""
    return _Scope(collation, bounds_query)


@dataclass
class Plan:
    """How a query reads its candidates."""

    index: str | None
    sorted_by_index: bool
    ids: Iterator[Key]
    reverse: bool = False  # the index is read backwards


def _usable(index: Index, bounds: dict[str, Bounds]) -> tuple[int, int]:
    """(leading fields with point bounds, fields with any bounds) for ``index``."""
    prefix = 0
    constrained = 0
    leading = True
    for path in index.spec.fields:
        field = bounds.get(path)
        if field is None:
            leading = False
            continue
        constrained += 1
        if leading and is_point(field):
            prefix += 1
        else:
            leading = False
    return prefix, constrained


def _single_point_prefix(index: Index, bounds: dict[str, Bounds]) -> int:
    """How many leading fields are pinned to exactly one key."""
    count = 0
    for path in index.spec.fields:
        field = bounds.get(path)
        if field is None or not is_point(field) or len(field) != 1:
            break
        count += 1
    return count


def _sort_matches(index: Index, prefix: int, sort: list[tuple[str, int]]) -> bool | None:
    """True for forward order, False for reverse, None if the index cannot give this sort."""
    fields = index.spec.fields[prefix:]
    directions = index.spec.directions[prefix:]
    if len(sort) > len(fields) or index.multikey:
        return None
    same = all(f == s and d == sd for (s, sd), f, d in zip(sort, fields, directions, strict=False))
    if same:
        return True
    opposite = all(
        f == s and d == -sd for (s, sd), f, d in zip(sort, fields, directions, strict=False)
    )
    return False if opposite else None


def _stored(index: Index, bounds: dict[str, Bounds]) -> list[Bounds]:
    return [stored_bounds(bounds.get(path, EVERYTHING), direction < 0)
            for path, direction in zip(index.spec.fields, index.spec.directions, strict=True)]


def _count_key() -> None:
    QUERY_EXECUTOR["scanned"] += 1


def _scan(index: Index, bounds: dict[str, Bounds], prefix: int, reverse: bool,
          ordered: bool) -> Iterator[Key]:
    """``_id`` keys of the index entries within the bounds, seeking past the rest.

    With ``ordered``, entries come in the order of the index fields after the ``prefix``
    fields with point bounds (one scan per combination of their points, merged), which is the
    order the sort asked for.
    """
    fields = _stored(index, bounds)
    entries = index.entries
    single = _single_point_prefix(index, bounds)
    if ordered and prefix > single:
        combos = list(itertools.product(*fields[:prefix]))
        scans = [bounded_scan(entries, [(i,) for i in combo] + fields[prefix:], reverse,
                              _count_key) for combo in combos]
        merged = heapq.merge(*scans, key=lambda e: e[prefix:], reverse=reverse)
        for entry in merged:
            yield entry[-1]
        return
    scan = bounded_scan(entries, fields, reverse, _count_key)
    if not index.multikey:
        for entry in scan:
            yield entry[-1]
        return
    seen: set[Key] = set()
    for entry in scan:
        key = entry[-1]
        if key not in seen:
            seen.add(key)
            yield key


def _counted(keys: Iterator[Key], id_lookup: bool) -> Iterator[Key]:
    counter = QUERY_EXECUTOR
    for key in keys:
        if id_lookup:
            counter["scanned"] += 1
        counter["scannedObjects"] += 1
        yield key


def plan(coll: Collection, query: dict[str, Any], sort: list[tuple[str, int]] | None) -> Plan:
    """Choose how to read candidate documents for ``query`` (and ``sort``, if any), under the
    collation of the current :func:`collation_scope` (simple outside one).

    The candidates are counted in :data:`QUERY_EXECUTOR` as they are read: index keys as the
    scan reads them, documents as they are fetched.
    """
    collation, bounds_query = _SCOPE.get()
    chosen, id_lookup = _plan(coll, query, sort, collation,
                              query if bounds_query is None else bounds_query)
    chosen.ids = _counted(chosen.ids, id_lookup)
    return chosen


def _combinations(index: Index, bounds: dict[str, Bounds], prefix: int) -> int:
    total = 1
    for path in index.spec.fields[:prefix]:
        total *= len(bounds[path])
    return total


def _eligible(index: Index, query: dict[str, Any]) -> bool:
    spec = index.spec
    if spec.sparse or not spec.ordered:
        return False
    return spec.partial_filter is None or implies(query, spec.partial_filter, bson_equal)


def _collatable(bounds: Bounds) -> bool:
    """Whether the bounds reach strings (or documents/arrays, which may hold strings)."""
    return not all(_plain_interval(i) for i in bounds)


def _plain_interval(interval: Interval) -> bool:
    low, high = interval.low, interval.high
    return isinstance(low, tuple) and isinstance(high, tuple) and low[0] == high[0] and \
        low[0] not in (STRING, OBJECT, ARRAY)


def _index_bounds(index: Index, query: dict[str, Any], bounds_query: dict[str, Any],
                  collation: Collation | None,
                  cache: dict[tuple[bool, bool], dict[str, Bounds]]) -> dict[str, Bounds]:
    same = index.collation == collation
    cached = cache.get((same, index.multikey))
    if cached is None:
        cached = field_bounds(bounds_query if same else query, multikey=index.multikey)
        if not same:  # a different collation orders strings differently: no string bounds
            cached = {p: b for p, b in cached.items() if not _collatable(b)}
        cache[(same, index.multikey)] = cached
    return cached


def _pinned_id(query: dict[str, Any], collation: Collation | None) -> Key | None:
    """The ``_id`` key of a filter whose top level pins ``_id`` to one ObjectId, integer or
    (without a collation) string, with no ``$and`` that could narrow it further."""
    if "$and" in query:
        return None
    value = query.get("_id")
    kind = type(value)
    if kind is ObjectId or kind is int or (kind is str and collation is None):
        return id_key(value)
    return None


def _plan(coll: Collection, query: dict[str, Any], sort: list[tuple[str, int]] | None,
          collation: Collation | None, bounds_query: dict[str, Any]) -> tuple[Plan, bool]:
    pinned = None if sort else _pinned_id(query, collation)
    if pinned is not None:  # what the _id bounds below come to, without computing them all
        return Plan(ID_INDEX, False, iter([pinned])), True
    plain = field_bounds(query)
    id_bounds = plain.get("_id")
    if id_bounds is not None and is_point(id_bounds) and not sort and (
            collation is None or not _collatable(id_bounds)):
        return Plan(ID_INDEX, False, iter(point_keys(id_bounds))), True
    cache: dict[tuple[bool, bool], dict[str, Bounds]] = {}
    if collation is None and bounds_query is query:
        cache[(True, False)] = plain  # what a simple-collation, non-multikey index computes

    best: tuple[tuple[int, int, int, int], Index, dict[str, Bounds], int, bool | None] | None
    best = None
    for index in coll.indexes.values():
        if not _eligible(index, query):
            continue
        bounds = _index_bounds(index, query, bounds_query, collation, cache)
        prefix, constrained = _usable(index, bounds)
        direction = _sort_matches(index, prefix, sort) if sort and \
            index.collation == collation else None
        if direction is not None and _combinations(index, bounds, prefix) > \
                MAX_POINT_COMBINATIONS:
            direction = None  # too many $in combinations to merge in order
        if constrained == 0 and direction is None:
            continue
        partial = 1 if index.spec.partial_filter is not None else 0
        score = (constrained, 1 if direction is not None else 0, partial,
                 -len(index.spec.fields))
        if best is None or score > best[0]:
            best = (score, index, bounds, prefix, direction)
    if best is None:
        return Plan(None, False, iter(list(coll.docs))), False
    _, index, bounds, prefix, direction = best
    reverse = direction is False
    ordered = direction is not None
    return Plan(index.spec.name, ordered, _scan(index, bounds, prefix, reverse, ordered),
                reverse), False


def id_keys_for(values: list[Any]) -> list[Key]:
    """Ordering keys of explicit ``_id`` values."""
    return [id_key(v) for v in values]
