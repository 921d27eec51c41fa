"""``$group`` accumulators that mongomock-ng lacks or gets wrong: ``$firstN``, ``$lastN``,
``$maxN``, ``$minN`` (5.2), ``$median``/``$percentile`` (7.0), and ``$sum``/``$avg`` in BSON
numeric types and ``$max``/``$min`` in BSON order; ``$top``/``$topN``/``$bottom``/``$bottomN``
(5.2), which need the group's documents, are computed around the library's accumulation.

The library evaluates an accumulator's argument for each document of the group and hands the
list of values to a function of its grouping table; an argument document such as
``{input: "$x", n: 2}`` arrives evaluated (``input`` absent when the field is missing).
:data:`SUPPORTED_ACCUMULATORS` lists every accumulator ``$group`` evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bson.decimal128 import Decimal128
from bson.int64 import Int64
from pymongo.errors import OperationFailure

from runtime.embedded import arithmetic
from runtime.embedded.comparison import ordering_key
from runtime.embedded.engine_support import NOTHING, mm_aggregate
from runtime.embedded.errors import ErrorCode
from runtime.embedded.ordering import document_sort_key


def _arguments(values: list[Any], name: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    for value in values:
        if not isinstance(value, dict) or any(key not in fields for key in value):
            raise OperationFailure(f"{name} requires an object with the fields "
                                   f"{', '.join(fields)}", code=ErrorCode.Location5787901)
    return values


def _count(values: list[dict[str, Any]], name: str) -> int:
    n = values[0].get("n") if values else 1
    if isinstance(n, bool) or not isinstance(n, int | float | Int64) or n != int(n) or n < 1:
        raise OperationFailure(f"Value for 'n' must be a positive integral value, got {n!r} "
                               f"in {name}", code=ErrorCode.Location5787908)
    return int(n)


def _first_or_last(name: str, last: bool) -> Callable[[list[Any]], Any]:
    def accumulate(values: list[Any]) -> Any:
        args = _arguments(values, name, ("input", "n"))
        n = _count(args, name)
        inputs = [a.get("input") for a in args]
        return inputs[-n:] if last else inputs[:n]

    return accumulate


def _extreme(name: str, largest: bool) -> Callable[[list[Any]], Any]:
    def accumulate(values: list[Any]) -> Any:
        args = _arguments(values, name, ("input", "n"))
        n = _count(args, name)
        present = [a["input"] for a in args if a.get("input") is not None]
        return sorted(present, key=ordering_key, reverse=largest)[:n]

    return accumulate


def _numbers(args: list[dict[str, Any]]) -> list[float]:
    out = []
    for arg in args:
        value = arg.get("input")
        if isinstance(value, Decimal128):
            out.append(float(value.to_decimal()))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(float(value))
    return sorted(out)


def _percentiles(name: str, single: bool) -> Callable[[list[Any]], Any]:
    fields = ("input", "method") if single else ("input", "p", "method")

    def accumulate(values: list[Any]) -> Any:
        args = _arguments(values, name, fields)
        if args and args[0].get("method") != "approximate":
            raise OperationFailure(f"Currently only 'approximate' can be used as percentile "
                                   f"'method' in {name}", code=ErrorCode.BadValue)
        ps = [0.5] if single else (args[0].get("p") if args else [0.5])
        if not isinstance(ps, list) or not ps or not all(
                isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p <= 1
                for p in ps):
            raise OperationFailure("The 'p' field must be an array of numbers from [0.0, 1.0]",
                                   code=ErrorCode.Location7750301)
        numbers = _numbers(args)
        if not numbers:
            return None if single else [None] * len(ps)
        picked = [numbers[max(0, math.ceil(p * len(numbers)) - 1)] for p in ps]
        return picked[0] if single else picked

    return accumulate


def _bson_extreme(largest: bool) -> Callable[[list[Any]], Any]:
    """``$max``/``$min`` in BSON order across types, ignoring null (None if nothing is left)."""
    def accumulate(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        if not present:
            return None
        return (max if largest else min)(present, key=ordering_key)

    return accumulate


#: The accumulators this module adds to (or corrects in) the library's grouping table.
ACCUMULATORS: dict[str, Callable[[list[Any]], Any]] = {
    "$sum": arithmetic.sum_values,
    "$avg": arithmetic.avg_values,
    "$max": _bson_extreme(largest=True),
    "$min": _bson_extreme(largest=False),
    "$firstN": _first_or_last("$firstN", last=False),
    "$lastN": _first_or_last("$lastN", last=True),
    "$maxN": _extreme("$maxN", largest=True),
    "$minN": _extreme("$minN", largest=False),
    "$median": _percentiles("$median", single=True),
    "$percentile": _percentiles("$percentile", single=False),
}
mm_aggregate._GROUPING_OPERATOR_MAP.update(ACCUMULATORS)


def _ordered(spec: Any, name: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sort_by = spec.get("sortBy")
    if not isinstance(sort_by, dict) or not sort_by or any(
            d not in (1, -1) or isinstance(d, bool) for d in sort_by.values()):
        raise OperationFailure(f"{name} requires 'sortBy' to be a sort specification",
                               code=ErrorCode.Location5788005)
    return sorted(docs, key=lambda d: document_sort_key(d, [(p, int(v))
                                                         for p, v in sort_by.items()]))


def _top_bottom(name: str, spec: Any, docs: list[dict[str, Any]],
                variables: dict[str, Any]) -> Any:
    """``$top``/``$topN``/``$bottom``/``$bottomN``: the ``output`` of the first (last) documents
    of the group in ``sortBy`` order (a missing output is null)."""
    many = name.endswith("N")
    fields = ("n", "sortBy", "output") if many else ("sortBy", "output")
    if not isinstance(spec, dict) or set(spec) != set(fields):
        raise OperationFailure(f"{name} requires exactly the fields {', '.join(fields)}",
                               code=ErrorCode.Location5788001)
    ordered = _ordered(spec, name, docs)
    if name.startswith("$bottom"):
        ordered.reverse()
    n = _count([{"n": mm_aggregate._parse_expression(spec["n"], {}, user_vars=variables)}],
               name) if many else 1
    outputs = []
    for doc in ordered[:n]:
        value = mm_aggregate._parse_expression(spec["output"], doc, user_vars=variables)
        outputs.append(None if value is NOTHING else value)
    if name.startswith("$bottom"):
        outputs.reverse()
    return outputs if many else outputs[0]


_TOP_BOTTOM = frozenset({"$top", "$topN", "$bottom", "$bottomN"})
_original_accumulate = mm_aggregate._accumulate_group


def _accumulate_group(output_fields: dict[str, Any], group_list: list[dict[str, Any]],
                      user_vars: dict[str, Any]) -> dict[str, Any]:
    """The library's accumulation, with ``$top``/``$bottom`` (which need whole documents)
    computed here; fields keep the order of the specification."""
    own = {field: next(iter(spec.items())) for field, spec in output_fields.items()
           if field != "_id" and isinstance(spec, dict) and len(spec) == 1
           and next(iter(spec)) in _TOP_BOTTOM}
    if not own:
        return dict(_original_accumulate(output_fields, group_list, user_vars=user_vars))
    rest = {k: v for k, v in output_fields.items() if k not in own}
    done = dict(_original_accumulate(rest, group_list, user_vars=user_vars))
    for field, (name, spec) in own.items():
        done[field] = _top_bottom(name, spec, group_list, user_vars or {})
    return {field: done[field] for field in output_fields if field in done}


mm_aggregate._accumulate_group = _accumulate_group

#: Every accumulator ``$group`` evaluates (the library's table plus its built-in ones).
SUPPORTED_ACCUMULATORS: frozenset[str] = frozenset(
    {*mm_aggregate._GROUPING_OPERATOR_MAP, *_TOP_BOTTOM, "$count", "$addToSet", "$push"})
