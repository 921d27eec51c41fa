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
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bson import Regex

from runtime.embedded.indexes import Index
from runtime.embedded.ordering import BOTTOM, TOP, Key, id_key, type_bracket, value_key
from runtime.embedded.storage import ID_INDEX, Collection

MAX_POINT_COMBINATIONS = 1000

#: What queries examined since the server started, reported by ``serverStatus`` as
#: ``metrics.queryExecutor`` like MongoDB does: ``scanned`` counts index keys read and
#: ``scannedObjects`` the documents fetched to be checked against a filter (every document of a
#: collection scan). Counting happens as candidates are consumed, so a query that stops at its
#: limit only counts what it read. Tests use it to prove that an index served a query.
QUERY_EXECUTOR: Counter[str] = Counter()


@dataclass
class _Bounds:
    points: list[Key] | None = None  # equality or $in
    low: Any = BOTTOM
    high: Any = TOP


@dataclass
class Plan:
    """How a query reads its candidates."""

    index: str | None
    sorted_by_index: bool
    ids: Iterator[Key]


def _indexable_scalar(value: Any) -> bool:
    return not isinstance(value, list | dict | Regex | re.Pattern)


def _field_conditions(query: dict[str, Any]) -> dict[str, _Bounds]:
    found: dict[str, _Bounds] = {}
    clauses: list[tuple[str, Any]] = []
    for key, value in query.items():
        if key == "$and" and isinstance(value, list):
            for part in value:
                if isinstance(part, dict):
                    clauses.extend(part.items())
        elif not key.startswith("$"):
            clauses.append((key, value))
    for path, cond in clauses:
        bounds = found.setdefault(path, _Bounds())
        if isinstance(cond, dict) and cond and next(iter(cond)).startswith("$"):
            for op, operand in cond.items():
                if op == "$eq" and _indexable_scalar(operand):
                    bounds.points = [value_key(operand)]
                elif op == "$in" and isinstance(operand, list) and all(
                    _indexable_scalar(v) for v in operand
                ):
                    bounds.points = sorted({value_key(v) for v in operand})
                elif op in ("$gt", "$gte") and _indexable_scalar(operand) and operand is not None:
                    bounds.low = value_key(operand)
                    if bounds.high is TOP:
                        bounds.high = (type_bracket(operand), TOP)
                elif op in ("$lt", "$lte") and _indexable_scalar(operand) and operand is not None:
                    bounds.high = value_key(operand)
                    if bounds.low is BOTTOM:
                        bounds.low = (type_bracket(operand),)
        elif _indexable_scalar(cond):
            bounds.points = [value_key(cond)]
    return {p: b for p, b in found.items() if b.points is not None or b.low is not BOTTOM
            or b.high is not TOP}


def _usable(index: Index, conditions: dict[str, _Bounds]) -> tuple[int, int]:
    """(equality prefix length, fields constrained) that ``index`` can serve."""
    prefix = 0
    constrained = 0
    for path in index.spec.fields:
        bounds = conditions.get(path)
        if bounds is None:
            break
        constrained += 1
        if bounds.points is None:
            break
        prefix += 1
    return prefix, constrained


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


def _point_combinations(index: Index, conditions: dict[str, _Bounds],
                        prefix: int) -> list[tuple[Any, ...]] | None:
    """Every combination of the equality prefix's points; None if there are too many."""
    point_lists = [conditions[index.spec.fields[i]].points or [] for i in range(prefix)]
    combos = list(itertools.islice(itertools.product(*point_lists), MAX_POINT_COMBINATIONS + 1))
    return None if len(combos) > MAX_POINT_COMBINATIONS else combos


def _scan(index: Index, conditions: dict[str, _Bounds], prefix: int, constrained: int,
          reverse: bool, ordered: bool) -> Iterator[Key]:
    """``_id`` keys of the index entries the conditions allow.

    With ``ordered``, entries come in the order of the index fields after the equality prefix
    (the scans of several ``$in`` points are merged), which is the order the sort asked for.
    """
    fields = index.spec.fields
    combos = _point_combinations(index, conditions, prefix)
    if combos is None:
        combos = [()]
        prefix = 0
    stored = [
        tuple(index.component_bounds(i, k, k)[0] for i, k in enumerate(combo)) for combo in combos
    ]
    stored.sort(reverse=reverse)
    ranges: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
    for lower_prefix in stored:
        lower, upper = lower_prefix, lower_prefix
        if constrained > prefix and not index.multikey:
            bounds = conditions[fields[prefix]]
            low, high = index.component_bounds(prefix, bounds.low, bounds.high)
            lower, upper = lower_prefix + (low,), lower_prefix + (high,)
        ranges.append((lower, upper))
    if ordered and len(ranges) > 1:
        scans = [index.scan_entries(lower, upper, reverse=reverse) for lower, upper in ranges]
        for entry in heapq.merge(*scans, key=lambda e: e[prefix:], reverse=reverse):
            yield entry[-1]
        return
    seen: set[Key] = set()
    dedupe = len(ranges) > 1 or index.multikey
    for lower, upper in ranges:
        for key in index.scan(lower, upper, reverse=reverse):
            if dedupe:
                if key in seen:
                    continue
                seen.add(key)
            yield key


def _counted(keys: Iterator[Key], from_index: bool) -> Iterator[Key]:
    counter = QUERY_EXECUTOR
    for key in keys:
        if from_index:
            counter["scanned"] += 1
        counter["scannedObjects"] += 1
        yield key


def plan(coll: Collection, query: dict[str, Any], sort: list[tuple[str, int]] | None) -> Plan:
    """Choose how to read candidate documents for ``query`` (and ``sort``, if any).

    The candidates are counted in :data:`QUERY_EXECUTOR` as they are read.
    """
    chosen = _plan(coll, query, sort)
    chosen.ids = _counted(chosen.ids, chosen.index is not None)
    return chosen


def _plan(coll: Collection, query: dict[str, Any], sort: list[tuple[str, int]] | None) -> Plan:
    conditions = _field_conditions(query)
    id_bounds = conditions.get("_id")
    if id_bounds is not None and id_bounds.points is not None and not sort:
        return Plan(ID_INDEX, False, iter(list(id_bounds.points)))

    best: tuple[tuple[int, int, int], Index, int, int, bool | None] | None = None
    for index in coll.indexes.values():
        if index.spec.partial_filter is not None or index.spec.sparse:
            continue
        if any(not isinstance(d, int | float) for _, d in index.spec.key):
            continue
        prefix, constrained = _usable(index, conditions)
        direction = _sort_matches(index, prefix, sort) if sort else None
        if direction is not None and _point_combinations(index, conditions, prefix) is None:
            direction = None  # too many $in combinations to merge in order
        if constrained == 0 and direction is None:
            continue
        score = (constrained, 1 if direction is not None else 0, -len(index.spec.fields))
        if best is None or score > best[0]:
            best = (score, index, prefix, constrained, direction)
    if best is None:
        return Plan(None, False, iter(list(coll.docs)))
    _, index, prefix, constrained, direction = best
    reverse = direction is False
    ordered = direction is not None
    return Plan(index.spec.name, ordered,
                _scan(index, conditions, prefix, constrained, reverse, ordered))


def id_keys_for(values: list[Any]) -> list[Key]:
    """Ordering keys of explicit ``_id`` values."""
    return [id_key(v) for v in values]
