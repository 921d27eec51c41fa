"""Index bounds: which key ranges of each indexed field a filter allows, and a scan that seeks.

A filter's top-level conditions (and those of a top-level ``$and``) become, per field, an
ordered list of :class:`Interval` over :mod:`runtime.embedded.ordering` keys; a field without a
usable condition gets the whole key space. :func:`bounded_scan` walks an index over these bounds
like MongoDB's index bounds checker: when an entry falls outside the bounds of some field, it
does not read on but *seeks* to the next entry that can be inside, so a query on
``{reactor: 1, priority: -1, nextRunAt: 1}`` with ``nextRunAt <= T`` reads the due keys of each
priority plus one key per priority, not every key of the reactor. Bounds are always a superset
of the matches (the filter is re-checked on every document).

It also decides whether a query *implies* a partial index's ``partialFilterExpression``
(:func:`implies`), which is when MongoDB lets the planner use that index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bson import Regex

from runtime.embedded.ordering import BOTTOM, TOP, Key, Reverse, type_bracket, value_key


@dataclass(frozen=True)
class Interval:
    """A range of keys, each end inclusive or not (``BOTTOM``/``TOP`` for open ends)."""

    low: Any
    high: Any
    low_inclusive: bool = True
    high_inclusive: bool = True

    def contains(self, key: Any) -> bool:
        """Whether ``key`` lies in the interval."""
        if key < self.low or (key == self.low and not self.low_inclusive):
            return False
        return not (key > self.high or (key == self.high and not self.high_inclusive))


EVERYTHING = (Interval(BOTTOM, TOP),)
Bounds = tuple[Interval, ...]

_RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})


def _indexable(value: Any) -> bool:
    return not isinstance(value, list | dict | Regex | re.Pattern)


def _point(value: Any) -> Interval:
    key = value_key(value)
    return Interval(key, key)


def _range(op: str, operand: Any) -> Interval:
    """Keys of the operand's type bracket on one side of it (MongoDB does not compare across
    types in ``$gt``/``$lt``)."""
    key = value_key(operand)
    bracket = type_bracket(operand)
    if op in ("$gt", "$gte"):
        return Interval(key, (bracket, TOP), op == "$gte", True)
    return Interval((bracket,), key, True, op == "$lte")


def _intersect(a: Bounds, b: Bounds) -> Bounds:
    out: list[Interval] = []
    for x in a:
        for y in b:
            if x.low > y.low or (x.low == y.low and not x.low_inclusive):
                low, low_inc = x.low, x.low_inclusive
            else:
                low, low_inc = y.low, y.low_inclusive
            if x.high < y.high or (x.high == y.high and not x.high_inclusive):
                high, high_inc = x.high, x.high_inclusive
            else:
                high, high_inc = y.high, y.high_inclusive
            if low < high or (low == high and low_inc and high_inc):
                out.append(Interval(low, high, low_inc, high_inc))
    return tuple(out)


def _operator_bounds(op: str, operand: Any) -> Bounds | None:
    """Bounds of one operator, or None if it does not narrow the keys."""
    if op == "$eq" and _indexable(operand):
        return (_point(operand),)
    if op == "$in" and isinstance(operand, list) and all(_indexable(v) for v in operand):
        keys = sorted({value_key(v) for v in operand})
        return tuple(Interval(k, k) for k in keys)
    if op in _RANGE_OPS and _indexable(operand) and operand is not None:
        try:
            return (_range(op, operand),)
        except TypeError:
            return None
    return None


def conjuncts(query: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ``(path, condition)`` terms of a filter's top level and of a top-level ``$and``."""
    terms: list[tuple[str, Any]] = []
    for key, value in query.items():
        if key == "$and" and isinstance(value, list):
            for part in value:
                if isinstance(part, dict):
                    terms.extend(conjuncts(part))
        elif not key.startswith("$"):
            terms.append((key, value))
    return terms


def _is_operator_doc(cond: Any) -> bool:
    return isinstance(cond, dict) and bool(cond) and next(iter(cond)).startswith("$")


def field_bounds(query: dict[str, Any], multikey: bool = False) -> dict[str, Bounds]:
    """Per path, the keys the filter allows (paths without a narrowing condition are left out).

    On a multikey index two conditions on one field may be met by different array elements, so
    only the first narrowing condition of each field is used there (MongoDB does the same).
    """
    found: dict[str, Bounds] = {}
    for path, cond in conjuncts(query):
        ops = list(cond.items()) if _is_operator_doc(cond) else [("$eq", cond)]
        for op, operand in ops:
            bounds = _operator_bounds(op, operand)
            if bounds is None:
                continue
            if path not in found:
                found[path] = bounds
            elif not multikey:
                found[path] = _intersect(found[path], bounds)
    return found


def stored_bounds(bounds: Bounds, descending: bool) -> Bounds:
    """Bounds in an index's stored order (a descending field stores ``Reverse`` keys)."""
    if not descending:
        return bounds

    def flip(end: Any) -> Any:
        if end is BOTTOM:
            return TOP
        if end is TOP:
            return BOTTOM
        return Reverse(end)

    return tuple(Interval(flip(i.high), flip(i.low), i.high_inclusive, i.low_inclusive)
                 for i in reversed(bounds))


def is_point(bounds: Bounds) -> bool:
    """Whether every interval is a single key (equality or ``$in``)."""
    return all(i.low == i.high and i.low_inclusive and i.high_inclusive for i in bounds)


# -- the scan ---------------------------------------------------------------------------------


def _locate(bounds: Bounds, key: Any, reverse: bool) -> int:
    """-1 if ``key`` is inside ``bounds``; else the index of the next interval in scan order
    that lies beyond it (``len(bounds)`` when none does)."""
    if not reverse:
        for n, interval in enumerate(bounds):
            if key < interval.low or (key == interval.low and not interval.low_inclusive):
                return n
            if interval.contains(key):
                return -1
        return len(bounds)
    for n in range(len(bounds) - 1, -1, -1):
        interval = bounds[n]
        if key > interval.high or (key == interval.high and not interval.high_inclusive):
            return len(bounds) - 1 - n
        if interval.contains(key):
            return -1
    return len(bounds)


def _interval_at(bounds: Bounds, key: Any) -> int:
    """The interval whose ends enclose ``key`` (ignoring inclusivity), or -1."""
    for n, interval in enumerate(bounds):
        if interval.low <= key <= interval.high:
            return n
    return -1


@dataclass
class _Seek:
    """Where a scan (re)starts: ``target`` components, and whether the last one is a
    past-the-prefix sentinel rather than a key inside the bounds."""

    target: tuple[Any, ...]
    inclusive: bool
    past: bool = False


def _extend(fields: list[Bounds], seek: _Seek, reverse: bool) -> None:
    """Lengthen a seek target that ends on a point with the start of the next field's bounds
    (so a scan for ``a == 1, b <= 5`` starts at ``(1, <first b>)``, not at ``(1,)``)."""
    while len(seek.target) < len(fields) and seek.inclusive:
        last = fields[len(seek.target) - 1]
        interval = last[_interval_at(last, seek.target[-1])]
        if interval.low != interval.high:
            return
        following = fields[len(seek.target)]
        start = following[0] if not reverse else following[-1]
        end = start.low if not reverse else start.high
        seek.target = seek.target + (end,)
        seek.inclusive = start.low_inclusive if not reverse else start.high_inclusive


def _cursor(entries: Any, fields: list[Bounds], seek: _Seek,
            reverse: bool) -> tuple[Any, list[int], int]:
    """An ``irange`` from the seek target to the end of the intervals it lies in (so a scan
    stops without reading a key beyond them); also the interval per component and the depth
    whose interval ends the range."""
    if not seek.past:
        _extend(fields, seek, reverse)
    comps = seek.target[:-1] if seek.past else seek.target
    where = [_interval_at(fields[j], c) for j, c in enumerate(comps)]
    depth = len(comps) - 1
    for j in range(len(comps)):
        interval = fields[j][where[j]]
        if interval.low != interval.high:
            depth = j
            break
    limit = fields[depth][where[depth]]
    head = comps[:depth]
    if not reverse:
        low = seek.target if seek.inclusive or seek.past else seek.target + (TOP,)
        high = head + (limit.high,)
        high_inclusive = limit.high_inclusive
        if high_inclusive:
            high = high + (TOP,)
        return entries.irange(low, high, (True, high_inclusive)), where, depth
    top = seek.target + (TOP,) if seek.inclusive and not seek.past else seek.target
    bottom = head + (limit.low,)
    if not limit.low_inclusive:
        bottom = bottom + (TOP,)
    return entries.irange(bottom, top, (True, seek.inclusive and not seek.past),
                          reverse=True), where, depth


def _next_interval(fields: list[Bounds], comps: tuple[Any, ...], where: list[int], depth: int,
                   reverse: bool) -> _Seek | None:
    """Where to go when a range ends: the next interval of the deepest field that has one."""
    for j in range(depth, -1, -1):
        n = where[j] + (1 if not reverse else -1)
        if 0 <= n < len(fields[j]):
            interval = fields[j][n]
            if not reverse:
                return _Seek(comps[:j] + (interval.low,), interval.low_inclusive)
            return _Seek(comps[:j] + (interval.high,), interval.high_inclusive)
    return None


def _single_points(fields: list[Bounds]) -> tuple[Any, ...] | None:
    """The one key each field's bounds allow, or None unless every field allows exactly one."""
    points = []
    for bounds in fields:
        if len(bounds) != 1:
            return None
        interval = bounds[0]
        if interval.low != interval.high or not (interval.low_inclusive
                                                 and interval.high_inclusive):
            return None
        points.append(interval.low)
    return tuple(points)


def bounded_scan(entries: Any, fields: list[Bounds], reverse: bool,
                 on_key: Callable[[], None]) -> Iterator[tuple[Any, ...]]:
    """Entries ``(components..., _id key)`` of a sorted list that lie within ``fields`` (one
    :data:`Bounds` per component, in stored order), in index order or reversed.

    ``on_key`` is called for every entry read, inside or outside the bounds (MongoDB's
    ``keysExamined``). An out-of-bounds entry makes the scan seek to the next entry that can be
    inside instead of reading on; each range read ends where its intervals end.
    """
    if any(not bounds for bounds in fields):
        return
    points = _single_points(fields)
    if points is not None:  # one key per field (a unique key lookup): one range, all inside
        for entry in entries.irange(points + (BOTTOM,), points + (TOP,), reverse=reverse):
            on_key()
            yield entry
        return
    width = len(fields)
    first = fields[0][0] if not reverse else fields[0][-1]
    seek: _Seek | None = _Seek((first.low,), first.low_inclusive) if not reverse else \
        _Seek((first.high,), first.high_inclusive)
    while seek is not None:
        cursor, where, depth = _cursor(entries, fields, seek, reverse)
        comps = seek.target[:-1] if seek.past else seek.target
        seek = None
        for entry in cursor:
            on_key()
            for position in range(width):
                bounds = fields[position]
                found = _locate(bounds, entry[position], reverse)
                if found < 0:
                    continue
                prefix = entry[:position]
                if found < len(bounds):
                    ordered = bounds if not reverse else bounds[::-1]
                    interval = ordered[found]
                    seek = _Seek(prefix + (interval.low,), interval.low_inclusive) \
                        if not reverse else _Seek(prefix + (interval.high,),
                                                  interval.high_inclusive)
                elif position > 0:
                    seek = _Seek(prefix + ((TOP,) if not reverse else (BOTTOM,)),
                                 not reverse, past=True)
                else:
                    return
                break
            else:
                yield entry
                continue
            break
        else:
            seek = _next_interval(fields, comps, where, depth, reverse)


# -- partial filter implication -----------------------------------------------------------


def _implies_op(conditions: list[Any], op: str, operand: Any,
                equal: Callable[[Any, Any], bool]) -> bool:
    """Whether one of the query's conditions on a path implies ``{op: operand}``."""
    for cond in conditions:
        ops = list(cond.items()) if _is_operator_doc(cond) else [("$eq", cond)]
        for qop, qval in ops:
            if _op_implies(qop, qval, op, operand, equal):
                return True
    return False


def _satisfies(value: Any, op: str, operand: Any, equal: Callable[[Any, Any], bool]) -> bool:
    """Whether the scalar ``value`` satisfies ``{op: operand}``."""
    if isinstance(value, list | dict):
        return False
    if op == "$eq":
        return equal(value, operand)
    if op == "$exists":
        return bool(operand) and value is not None
    if op == "$in":
        return isinstance(operand, list) and any(equal(value, v) for v in operand)
    if op in _RANGE_OPS:
        if value is None or operand is None or type_bracket(value) != type_bracket(operand):
            return False
        try:
            a, b = value_key(value), value_key(operand)
            return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
        except TypeError:
            return False
    return False


def _op_implies(qop: str, qval: Any, op: str, operand: Any,
                equal: Callable[[Any, Any], bool]) -> bool:
    if qop == "$eq":
        return _satisfies(qval, op, operand, equal)
    if qop == "$in" and isinstance(qval, list) and qval:
        return all(_satisfies(v, op, operand, equal) for v in qval)
    if qop == "$exists" and op == "$exists":
        return bool(qval) and bool(operand)
    if qop in _RANGE_OPS and qval is not None and _indexable(qval):
        if op == "$exists":
            return bool(operand)
        if op not in _RANGE_OPS or operand is None or \
                type_bracket(qval) != type_bracket(operand):
            return False
        try:
            q, p = value_key(qval), value_key(operand)
        except TypeError:
            return False
        upper = ("$lt", "$lte")
        if (qop in upper) != (op in upper):
            return False
        if op in upper:  # query x < q (or <=) implies x < p when q is below p
            return q < p or (q == p and (op == "$lte" or qop == "$lt"))
        return q > p or (q == p and (op == "$gte" or qop == "$gt"))
    return False


def implies(query: dict[str, Any], partial: dict[str, Any],
            equal: Callable[[Any, Any], bool]) -> bool:
    """Whether every document matching ``query`` matches ``partial`` (a partial index's filter),
    judged the way MongoDB's planner does: term by term on the top level (and ``$and``)."""
    by_path: dict[str, list[Any]] = {}
    for path, cond in conjuncts(query):
        by_path.setdefault(path, []).append(cond)
    for key in partial:
        if key.startswith("$") and key != "$and":
            return False
    for path, cond in conjuncts(partial):
        conditions = by_path.get(path)
        if not conditions:
            return False
        ops = list(cond.items()) if _is_operator_doc(cond) else [("$eq", cond)]
        for op, operand in ops:
            if not _implies_op(conditions, op, operand, equal):
                return False
    return True


def point_keys(bounds: Bounds) -> list[Key]:
    """The keys of point bounds (see :func:`is_point`)."""
    return [i.low for i in bounds]
