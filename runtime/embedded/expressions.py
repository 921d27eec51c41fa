"""The expression evaluator: mongomock-ng's parser with the engine's operators.

mongomock-ng's ``_Parser`` walks an expression; its ``parse`` is replaced here by one that first
looks the operator up in :data:`HANDLERS` (the engine's own implementations, gathered from the
arithmetic, date, array, object, string and regex modules) and checks the expression limits.
Every coercion of an expression to a boolean uses MongoDB truthiness
(:func:`runtime.embedded.comparison.to_bool`). :data:`SUPPORTED_EXPRESSIONS` lists what is
implemented; any other ``$``-name is refused as ``InvalidPipelineOperator`` (168).
"""

from __future__ import annotations

import datetime
import operator
import re
from collections.abc import Callable
from typing import Any

from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from runtime.embedded import (
    arithmetic,
    array_expressions,
    date_arithmetic,
    date_expressions,
    deadlines,
    object_expressions,
    regex_expressions,
    string_expressions,
)
from runtime.embedded import expression_limits as limits
from runtime.embedded.comparison import (
    COMPARISONS,
    bson_compare,
    bson_equal,
    bson_type_name,
    to_bool,
)
from runtime.embedded.engine_support import NOTHING, mm_aggregate, mm_helpers, translate
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.expressions_hash import hashed_index_key

_original_comparison = mm_aggregate._Parser._handle_comparison_operator
_original_type_operator = mm_aggregate._Parser._handle_type_operator


def _expression_comparison(self: Any, op: str, values: Any) -> Any:
    if op in ("$eq", "$ne", "$cmp") and isinstance(values, list) and len(values) == 2:
        a, b = self.parse(values[0]), self.parse(values[1])
        if op == "$cmp":
            return 0 if bson_equal(a, b) else (-1 if bson_compare(operator.lt, a, b) else 1)
        return bson_equal(a, b) if op == "$eq" else not bson_equal(a, b)
    return _original_comparison(self, op, values)


def _expression_type(self: Any, op: str, values: Any) -> Any:
    if op == "$type":
        return bson_type_name(self.parse(values))
    return _original_type_operator(self, op, values)


def _expression_operand(parser: Any, operand: Any) -> Any:
    """The single argument of an operator written ``{$op: x}`` or ``{$op: [x]}``."""
    if isinstance(operand, list):
        if len(operand) != 1:
            raise OperationFailure("Expression takes exactly 1 argument",
                                   code=ErrorCode.Location16020)
        operand = operand[0]
    return parser.parse(operand)


def _not_expression(parser: Any, operand: Any) -> Any:
    return not to_bool(_expression_operand(parser, operand))


def _strcasecmp_expression(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, list) or len(operand) != 2:
        raise OperationFailure("Expression $strcasecmp takes exactly 2 arguments",
                               code=ErrorCode.Location16020)
    a, b = (parser.parse(x) for x in operand)
    a = "" if a is None or a is NOTHING else str(a).upper()
    b = "" if b is None or b is NOTHING else str(b).upper()
    return (a > b) - (a < b)


def _to_long_expression(parser: Any, operand: Any) -> Any:
    value = _original_parse(parser, {"$toLong": operand})
    return Int64(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _to_string_expression(parser: Any, operand: Any) -> Any:
    value = _expression_operand(parser, operand)
    if isinstance(value, datetime.datetime):
        return date_arithmetic.date_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return _original_parse(parser, {"$toString": {"$literal": value}})


def _switch_expression(parser: Any, operand: Any) -> Any:
    branches = operand.get("branches") if isinstance(operand, dict) else None
    if not isinstance(branches, list) or not all(
            isinstance(b, dict) and set(b) == {"case", "then"} for b in branches):
        return _original_parse(parser, {"$switch": operand})  # the library's shape errors
    for branch in branches:
        if to_bool(parser.parse(branch["case"])):
            return parser.parse(branch["then"])
    if "default" in operand:
        return parser.parse(operand["default"])
    raise OperationFailure("$switch could not find a matching branch for an input, and no "
                           "default was specified.", code=ErrorCode.Location40066)


def _convert_expression(parser: Any, operand: Any) -> Any:
    value = _original_parse(parser, {"$convert": operand})
    target = operand.get("to") if isinstance(operand, dict) else None
    if target in ("long", 18) and isinstance(value, int) and not isinstance(value, bool):
        return Int64(value)
    return value


_original_parse = mm_aggregate._Parser.parse
#: The ordering comparisons of aggregation expressions (BSON order across types).
EXPRESSION_ORDERINGS = COMPARISONS


def expression_handler(name: str) -> Callable[[Any, Any], Any]:
    """The engine's implementation of an expression operator (see :data:`HANDLERS`)."""
    return HANDLERS[name]


def _to_hashed_index_key_expression(parser: Any, operand: Any) -> Any:
    value = _expression_operand(parser, operand)
    return hashed_index_key(None if value is NOTHING else value)


def _parse_to_bool(self: Any, expression: Any) -> bool:
    """``$and``/``$or``/``$cond``/``$switch``: an expression's value as MongoDB's boolean."""
    return to_bool(self.parse(expression))


def _refused(name: str) -> Callable[[Any, Any], Any]:
    def refuse(parser: Any, operand: Any) -> Any:
        raise OperationFailure(f"Unrecognized expression '{name}': not supported by the "
                               "embedded server", code=ErrorCode.InvalidPipelineOperator)

    return refuse


#: Operators the library lists but the embedded server does not implement (server-side
#: JavaScript and text-search metadata): refused with InvalidPipelineOperator (168).
_REFUSED = ("$function", "$accumulator", "$meta")

#: The engine's implementation of each expression operator it overrides or adds.
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    **arithmetic.HANDLERS,
    **date_expressions.HANDLERS,
    **date_arithmetic.HANDLERS,
    **array_expressions.HANDLERS,
    **object_expressions.HANDLERS,
    **string_expressions.HANDLERS,
    **regex_expressions.handlers(NOTHING),
    "$not": _not_expression,
    "$strcasecmp": _strcasecmp_expression,
    "$toLong": _to_long_expression,
    "$toString": _to_string_expression,
    "$switch": _switch_expression,
    "$convert": _convert_expression,
    "$toHashedIndexKey": _to_hashed_index_key_expression,
    **{name: _refused(name) for name in _REFUSED},
}


def _parse_expression(self: Any, expression: Any) -> Any:
    deadlines.tick()
    if isinstance(expression, dict) and len(expression) == 1:
        name = next(iter(expression))
        operand = expression[name]
        limits.check_shape(name, operand)
        handler = HANDLERS.get(name)
        if handler is not None:
            if name == "$range" and isinstance(operand, list) and 2 <= len(operand) <= 3:
                limits.check_range(*(self.parse(a) for a in operand),
                                   *([] if len(operand) == 3 else [1]))
            result = handler(self, operand)
            if name in _BUILDERS:
                limits.check_result(name, result)
            return result
        if name in limits.PRECHECKED and isinstance(operand, list):
            # Evaluate once, check the size the result would have, then build from the values.
            values = [self.parse(argument) for argument in operand]
            limits.check_operands(name, values)
            return _original_parse(self, {name: [{"$literal": v} for v in values]})
        if name in _BUILDERS:
            if name == "$range" and isinstance(operand, list) and 2 <= len(operand) <= 3:
                limits.check_range(*(self.parse(a) for a in operand),
                                   *([] if len(operand) == 3 else [1]))
            result = _original_parse(self, expression)
            limits.check_result(name, result)
            return result
    return _original_parse(self, expression)


# Operators whose result may grow far beyond their arguments: checked against the limits.
_BUILDERS = frozenset({"$concat", "$concatArrays", "$range", "$reduce", "$replaceAll",
                       "$replaceOne", "$split", "$zip", "$map", "$substr", "$substrCP",
                       "$substrBytes", "$toUpper", "$toLower", "$setUnion", "$reverseArray"})


def let_variables(let: Any, variables: dict[str, Any]) -> dict[str, Any]:
    """System variables plus a command's ``let`` constants (expressions evaluated once)."""
    if let is None:
        return variables
    if not isinstance(let, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           "BSON field 'let' is the wrong type, expected type 'object'")
    combined = dict(variables)
    for name, expression in let.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][A-Za-z0-9_]*", name):
            raise CommandError(ErrorCode.Location16866,
                               f"'{name}' starts with an invalid character for a user "
                               "variable name")
        try:
            combined[name] = mm_aggregate._Parser({}, user_vars=variables).parse(expression)
        except (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError) as exc:
            raise translate(exc) from exc
    return combined


def system_variables(now: datetime.datetime, cluster_time: Timestamp) -> dict[str, Any]:
    """``$$NOW`` and ``$$CLUSTER_TIME`` for one command (the same value for all its documents).

    ``NOW`` is cut to BSON's millisecond precision, so a stored ``$$NOW`` equals what a client
    reads back and queries with."""
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return {"NOW": now, "CLUSTER_TIME": cluster_time}


mm_aggregate._Parser._handle_comparison_operator = _expression_comparison
mm_aggregate._Parser._handle_type_operator = _expression_type
mm_aggregate._Parser.parse = _parse_expression
mm_aggregate._Parser._parse_to_bool = _parse_to_bool
mm_helpers.mongodb_to_bool = to_bool

_LIBRARY_OPERATORS = frozenset(
    name for table in (
        mm_aggregate.arithmetic_operators, mm_aggregate.project_operators,
        mm_aggregate.projection_operators, mm_aggregate.comparison_operators,
        mm_aggregate.date_operators, mm_aggregate.array_operators,
        mm_aggregate.conditional_operators, mm_aggregate.control_flow_operators,
        mm_aggregate.set_operators, mm_aggregate.string_operators,
        mm_aggregate.type_convertion_operators, mm_aggregate.type_operators,
        mm_aggregate.boolean_operators, mm_aggregate.object_operators,
        mm_aggregate.field_operators, mm_aggregate.custom_operators,
        mm_aggregate.text_search_operators,
    ) for name in table)

#: Every aggregation expression operator the engine evaluates: the library's operator tables
#: plus the engine's handlers, less the refused ones.
SUPPORTED_EXPRESSIONS: frozenset[str] = (_LIBRARY_OPERATORS | frozenset(HANDLERS)) - frozenset(
    _REFUSED)

