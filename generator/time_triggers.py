"""Time-driven triggers: trigger filters whose verdict changes as time passes, with no write.

A filter that compares a document field with ``$$NOW`` (or ``$$CLUSTER_TIME``), such as
``{$lte: ['$dueAt', '$$NOW']}``, starts or stops matching a document when the clock passes
``dueAt``. The runtime cannot learn that from a change stream, so it re-plans documents whose
*moment* (``document[path] + offset_ms``) has passed, with a window query on an ascending index
over ``path``. This module finds those comparisons in a filter and turns each into a
:class:`runtime.reactor.TimeTrigger`; every other use of the clock in a filter (or in a
watched value) is refused with a :class:`generator.filters.FilterError`, because the runtime
could not tell when its verdict changes.

Supported, at any depth of ``$and`` / ``$or`` / ``$not`` (and, in a query, ``$and`` / ``$or`` /
``$nor`` around ``$expr``), where ``OP`` is ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``,
``$lte`` or ``$cmp`` and either side may come first:

- ``{OP: [F, N]}`` where ``F`` is one field shifted by constants and ``N`` is the clock shifted
  by constants. Shifts are ``$add`` / ``$subtract`` of constant integers (milliseconds) and
  ``$dateAdd`` / ``$dateSubtract`` with a constant integer ``amount``, a fixed-length ``unit``
  (millisecond to week) and no ``timezone``. The moment is when ``F == N``.
- ``{OP: [E, k]}`` where ``E`` is ``{$subtract: [N, F]}`` (or ``[F, N]``), the time elapsed
  between the field and the clock, and ``k`` a constant integer.
- ``{OP: [V, x]}`` where ``V`` is itself such a comparison (``{$eq: [{$lt: [...]}, true]}``)
  and ``x`` does not read the clock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any

from generator.filters import FilterError, is_expression_filter, is_extended_json
from generator.loader import pointer_join
from runtime.reactor import TimeTrigger

CLOCK_VARIABLES = frozenset({"$$NOW", "$$CLUSTER_TIME"})
"""The system variables whose value is the current time."""

UNIT_MS = {
    "millisecond": 1,
    "second": 1_000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 604_800_000,
}
"""``$dateAdd`` / ``$dateSubtract`` units of fixed length (in UTC), in milliseconds."""

CALENDAR_UNITS = frozenset({"month", "quarter", "year"})
COMPARISONS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$cmp"})
BOOLEANS = frozenset({"$and", "$or", "$not"})

REASON = ("the moment this filter's verdict changes cannot be computed from one field, so the "
          "runtime could not plan it when time passes")
HINT = ("compare one date field with $$NOW, optionally shifted by constants: "
        "{$lte: ['$dueAt', '$$NOW']}, {$lte: [{$add: ['$dueAt', 3600000]}, '$$NOW']}, "
        "{$lt: ['$remindAt', {$dateSubtract: {startDate: '$$NOW', unit: hour, amount: 2}}]} "
        "(units millisecond, second, minute, hour, day, week; no timezone) or "
        "{$gte: [{$subtract: ['$$NOW', '$createdAt']}, 86400000]}; combine such comparisons "
        "with $and, $or, $not and $nor (see 'Time-driven triggers' in "
        "docs/reactor-definitions.md)")
WATCH_HINT = ("watch the date field itself (e.g. dueAt: 1) and compare it with $$NOW in "
              "trigger.filter, which re-plans the document when its moment passes")

INDEX_PREFIX = "reactgen_time_"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_MAX_SAFE = 64


def index_name(path: str) -> str:
    """The name of the ascending index the generator ensures on the time path ``path``.

    ``reactgen_time_<path>`` when the path is made of ASCII letters, digits and ``_`` only;
    otherwise every other character (dots included) becomes ``_``, long paths are cut, and
    a short hash of the exact path is appended, so distinct paths never share a name.
    ``_id`` is always indexed, as ``_id_``.
    """
    if path == "_id":
        return "_id_"
    safe = _UNSAFE.sub("_", path)[:_MAX_SAFE]
    if safe == path and path:
        return INDEX_PREFIX + safe
    return f"{INDEX_PREFIX}{safe}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def find_time_triggers(spec: Any, pointer: str) -> tuple[TimeTrigger, ...]:
    """The time triggers of a trigger filter, deduplicated and sorted by (path, offset).

    ``spec`` is the filter as written in the definition (a query document or an expression),
    already accepted by :mod:`generator.filters`; ``pointer`` is its JSON pointer. Raises
    :class:`FilterError` at the offending place when the filter reads the clock in a way whose
    moment of change cannot be computed from one field.
    """
    found: set[TimeTrigger] = set()
    if isinstance(spec, dict) and is_expression_filter(spec):
        _verdict(spec, pointer, found)
    elif isinstance(spec, dict):
        _query(spec, pointer, found)
    return tuple(sorted(found, key=lambda t: (t.path, t.offset_ms)))


def check_watch_clock(watch: Any, pointer: str) -> None:
    """Refuse ``$$NOW`` / ``$$CLUSTER_TIME`` anywhere in a ``watch`` projection.

    Watched values are compared with the snapshot of the last planned change; a value computed
    from the clock would differ on every evaluation.
    """
    where = _clock_location(watch, pointer)
    if where is not None:
        raise FilterError(where.pointer, f"{where.variable} in a watched value: watched values "
                          "are compared with the snapshot of the last planned change, and a "
                          "value computed from the clock would differ on every evaluation",
                          WATCH_HINT)


def clock_reference(expr: Any, pointer: str) -> tuple[str, str] | None:
    """The first ``$$NOW`` / ``$$CLUSTER_TIME`` that ``expr`` reads, as (variable, pointer),
    or None (``$literal`` values and Extended JSON wrappers do not count)."""
    where = _clock_location(expr, pointer)
    return None if where is None else (where.variable, where.pointer)


# --- queries and boolean structure ------------------------------------------------------------


def _query(query: dict[str, Any], pointer: str, found: set[TimeTrigger]) -> None:
    for key, value in query.items():
        here = pointer_join(pointer, key)
        if key in ("$and", "$or", "$nor") and isinstance(value, list):
            for index, part in enumerate(value):
                if isinstance(part, dict):
                    _query(part, pointer_join(here, index), found)
        elif key == "$expr":
            _verdict(value, here, found)
        elif key != "$comment":
            _refuse_clock(value, here)


def _verdict(expr: Any, pointer: str, found: set[TimeTrigger]) -> None:
    """Collect the triggers of a boolean-valued expression (the filter or a part of it)."""
    single = _single_operator(expr)
    if single is not None:
        op, arg = single
        here = pointer_join(pointer, op)
        if op in BOOLEANS:
            parts = arg if isinstance(arg, list) else [arg]
            for index, part in enumerate(parts):
                _verdict(part, pointer_join(here, index) if isinstance(arg, list) else here,
                         found)
            return
        if op in COMPARISONS and isinstance(arg, list) and len(arg) == 2:
            _comparison(arg, here, found)
            return
    _refuse_clock(expr, pointer)


def _comparison(args: list[Any], pointer: str, found: set[TimeTrigger]) -> None:
    sides = [_term(arg, pointer_join(pointer, index)) for index, arg in enumerate(args)]
    clocked = [term for term in sides if term.clock]
    if not clocked:
        return
    trigger = _pair(sides[0], sides[1]) or _pair(sides[1], sides[0])
    if trigger is not None:
        found.add(trigger)
        return
    if all(not term.clock or _is_verdict(arg) for term, arg in zip(sides, args, strict=True)):
        # A comparison of comparisons ({$eq: [{$lt: ['$dueAt', '$$NOW']}, true]}) changes
        # only when one of the inner comparisons does.
        for index, (term, arg) in enumerate(zip(sides, args, strict=True)):
            if term.clock:
                _verdict(arg, pointer_join(pointer, index), found)
        return
    variable = clocked[0].clock
    for term in sides:  # the clock used where it cannot be planned
        if term.clock and term.why is not None:
            raise FilterError(term.why[0], f"{term.clock} is used in {term.why[1]}: {REASON}",
                              HINT)
    for term in sides:  # the clock compared with something that is not one shifted field
        if not term.clock and term.why is not None:
            raise FilterError(term.why[0], f"{variable} is compared with {term.why[1]}: "
                              f"{REASON}", HINT)
    elapsed = next((t for t in sides if t.kind == "elapsed"), None)
    if elapsed is not None:
        what = (f"the time between '${elapsed.path}' and {variable} is compared with something "
                "other than a constant integer (milliseconds)")
    else:
        what = f"{variable} is compared with a value that is not one document field"
    raise FilterError(pointer, f"{what}: {REASON}", HINT)


def _refuse_clock(expr: Any, pointer: str) -> None:
    """Raise if ``expr`` (not a supported comparison) reads the clock."""
    term = _term(expr, pointer)
    if not term.clock:
        return
    if term.why is not None:
        raise FilterError(term.why[0], f"{term.clock} is used in {term.why[1]}: {REASON}", HINT)
    raise FilterError(pointer, f"{term.clock} is not compared with a document field: {REASON}",
                      HINT)


def _is_verdict(expr: Any) -> bool:
    single = _single_operator(expr)
    return single is not None and (single[0] in BOOLEANS or single[0] in COMPARISONS)


def _single_operator(expr: Any) -> tuple[str, Any] | None:
    if isinstance(expr, dict) and len(expr) == 1 and not is_extended_json(expr):
        ((op, arg),) = expr.items()
        if isinstance(op, str) and op.startswith("$"):
            return op, arg
    return None


# --- values as functions of time ---------------------------------------------------------------


@dataclass(frozen=True)
class _Term:
    """An expression's value seen as a function of the clock ``t`` and one field ``p``.

    ``number``: the constant ``shift``; ``field``: ``p + shift``; ``now``: ``t + shift``;
    ``elapsed``: ``sign * (t - p) + shift``; ``other``: anything else (``why`` says what, as
    ``(pointer, noun phrase)``, when it matters). ``clock`` names the clock variable the
    expression reads, if any.
    """

    kind: str
    path: str = ""
    shift: int = 0
    sign: int = 1
    clock: str = ""
    why: tuple[str, str] | None = None


def _pair(first: _Term, second: _Term) -> TimeTrigger | None:
    """The trigger of ``first OP second`` for the supported shapes (in this order)."""
    if first.kind == "field" and second.kind == "now":
        # p + a == t + b  <=>  t == p + (a - b)
        return TimeTrigger(first.path, first.shift - second.shift, index_name(first.path))
    if first.kind == "elapsed" and second.kind == "number":
        # s * (t - p) + a == k  <=>  t == p + s * (k - a)
        offset = first.sign * (second.shift - first.shift)
        return TimeTrigger(first.path, offset, index_name(first.path))
    return None


def _term(expr: Any, pointer: str) -> _Term:
    if isinstance(expr, bool) or expr is None:
        return _Term("other")
    if isinstance(expr, int | float):
        number = _integer(expr)
        return _Term("number", shift=number) if number is not None else _Term("other")
    if isinstance(expr, str):
        return _string_term(expr, pointer)
    if isinstance(expr, dict) and is_extended_json(expr):
        number = _integer(expr)
        return _Term("number", shift=number) if number is not None else _Term("other")
    single = _single_operator(expr)
    if single is not None:
        op, arg = single
        here = pointer_join(pointer, op)
        if op == "$literal":
            number = _integer(arg)
            return _Term("number", shift=number) if number is not None else _Term("other")
        if op in ("$add", "$subtract") and isinstance(arg, list):
            return _arithmetic(op, arg, here)
        if op in ("$dateAdd", "$dateSubtract") and isinstance(arg, dict):
            return _date_shift(op, arg, here)
    where = _clock_location(expr, pointer)
    if where is None:
        return _Term("other")
    if where.operator:
        return _Term("other", clock=where.variable, why=(where.operator_pointer, where.operator))
    if single is not None:
        return _Term("other", clock=where.variable,
                     why=(pointer_join(pointer, single[0]), single[0]))
    what = "an array" if isinstance(expr, list) else "an object"
    return _Term("other", clock=where.variable, why=(pointer, what))


def _string_term(expr: str, pointer: str) -> _Term:
    if expr == "$$CLUSTER_TIME":
        raise FilterError(pointer, "$$CLUSTER_TIME is a BSON Timestamp: the runtime plans "
                          "time-driven triggers with date windows, which never select it",
                          "compare a date field with $$NOW instead, e.g. "
                          "{$lte: ['$dueAt', '$$NOW']}")
    if expr in CLOCK_VARIABLES:
        return _Term("now", clock=expr)
    if expr.startswith("$$"):
        variable, _, rest = expr[2:].partition(".")
        if variable in ("ROOT", "CURRENT") and rest:
            return _field_term(rest)
        if f"$${variable}" in CLOCK_VARIABLES:
            return _Term("other", clock=f"$${variable}", why=(pointer, repr(expr)))
        return _Term("other")
    if expr.startswith("$"):
        return _field_term(expr[1:])
    return _Term("other")


def _field_term(path: str) -> _Term:
    parts = path.split(".")
    if any(not part or part.startswith("$") for part in parts):
        return _Term("other")  # not a valid field path; the database refuses it anyway
    return _Term("field", path=path)


def _arithmetic(op: str, args: list[Any], pointer: str) -> _Term:
    terms = [_term(arg, pointer_join(pointer, index)) for index, arg in enumerate(args)]
    for term in terms:
        if term.clock and term.why is not None:
            return term  # the innermost place where the clock cannot be planned
    result = _add(terms) if op == "$add" else _subtract(terms)
    if result is not None:
        return result
    clock = next((term.clock for term in terms if term.clock), "")
    inner = next((term.why for term in terms if term.why is not None), None)
    if inner is not None:
        return _Term("other", clock=clock, why=inner)
    operands = " and ".join(_show(arg) for arg in args) or "nothing"
    return _Term("other", clock=clock, why=(pointer, f"{op} of {operands}"))


def _add(terms: list[_Term]) -> _Term | None:
    if any(term.kind == "other" for term in terms):
        return None
    timed = [term for term in terms if term.kind != "number"]
    total = sum(term.shift for term in terms)
    if not timed:
        return _Term("number", shift=total)
    if len(timed) > 1:
        return None
    return replace(timed[0], shift=total)


def _subtract(terms: list[_Term]) -> _Term | None:
    if len(terms) != 2:
        return None
    left, right = terms
    if right.kind == "number" and left.kind in ("number", "field", "now", "elapsed"):
        return replace(left, shift=left.shift - right.shift)
    if left.kind == "now" and right.kind == "field":
        # (t + b) - (p + a) == (t - p) + (b - a)
        return _Term("elapsed", path=right.path, shift=left.shift - right.shift,
                     clock=left.clock)
    if left.kind == "field" and right.kind == "now":
        # (p + a) - (t + b) == -(t - p) + (a - b)
        return _Term("elapsed", path=left.path, sign=-1, shift=left.shift - right.shift,
                     clock=right.clock)
    if left.kind == "number" and right.kind == "elapsed":
        # k - (s * (t - p) + a) == -s * (t - p) + (k - a)
        return replace(right, sign=-right.sign, shift=left.shift - right.shift)
    return None


def _date_shift(op: str, spec: dict[str, Any], pointer: str) -> _Term:
    start = _term(spec.get("startDate"), pointer_join(pointer, "startDate"))
    if start.clock and start.why is not None:
        return start
    clock = start.clock
    if not clock:
        where = _clock_location(spec, pointer)
        clock = where.variable if where is not None else ""
    unit = spec.get("unit")
    amount = _integer(spec.get("amount"))
    problem: tuple[str, str] | None = None
    if "timezone" in spec:
        problem = (pointer_join(pointer, "timezone"),
                   f"{op} with a timezone (local time does not advance at a fixed rate)")
    elif isinstance(unit, str) and unit in CALENDAR_UNITS:
        problem = (pointer_join(pointer, "unit"),
                   f"{op} with unit '{unit}' ({unit}s have no fixed length)")
    elif not isinstance(unit, str) or unit not in UNIT_MS:
        problem = (pointer_join(pointer, "unit"),
                   f"{op} with a unit other than a constant millisecond, second, minute, hour, "
                   "day or week")
    elif amount is None:
        problem = (pointer_join(pointer, "amount"),
                   f"{op} with an amount that is not a constant integer")
    elif start.kind not in ("field", "now"):
        problem = (pointer_join(pointer, "startDate"),
                   f"{op} of a startDate that is neither one date field nor the clock")
    if problem is not None:
        return _Term("other", clock=clock, why=problem)
    assert isinstance(unit, str) and amount is not None
    delta = amount * UNIT_MS[unit]
    return replace(start, shift=start.shift + (delta if op == "$dateAdd" else -delta))


def _integer(value: Any) -> int | None:
    """A constant whole number (plain, ``$literal`` or Extended JSON), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "$literal":
            return _integer(inner)
        if key in ("$numberInt", "$numberLong", "$numberDouble") and isinstance(inner, str):
            try:
                number = float(inner) if key == "$numberDouble" else int(inner)
            except ValueError:
                return None
            return _integer(number)
    return None


def _show(arg: Any) -> str:
    if isinstance(arg, str):
        return repr(arg)
    single = _single_operator(arg)
    if single is not None:
        return f"{{{single[0]}: ...}}"
    return repr(arg) if not isinstance(arg, dict | list) else "an expression"


@dataclass(frozen=True)
class _ClockUse:
    """Where an expression reads the clock: the variable, its pointer, and the innermost
    enclosing operator that is not a comparison or boolean (``operator`` is "" if none)."""

    variable: str
    pointer: str
    operator: str = ""
    operator_pointer: str = ""


STRUCTURE = COMPARISONS | BOOLEANS | {"$expr", "$nor"}


def _clock_location(expr: Any, pointer: str) -> _ClockUse | None:
    """Where ``expr`` first reads the clock, or None."""
    if isinstance(expr, str):
        variable = expr.split(".", 1)[0]
        return _ClockUse(variable, pointer) if variable in CLOCK_VARIABLES else None
    if isinstance(expr, list):
        items: list[tuple[str | int, Any]] = list(enumerate(expr))
    elif isinstance(expr, dict) and not is_extended_json(expr):
        items = [(key, value) for key, value in expr.items() if key != "$literal"]
    else:
        return None
    for key, value in items:
        here = pointer_join(pointer, key)
        found = _clock_location(value, here)
        if found is not None:
            if (not found.operator and isinstance(key, str) and key.startswith("$")
                    and key not in STRUCTURE):
                return replace(found, operator=key, operator_pointer=here)
            return found
    return None
