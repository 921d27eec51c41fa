"""Update operators the engine implements or corrects.

``$inc``/``$mul`` keep BSON numeric result types (registered in mongomock-ng's updater table);
``$addToSet``, ``$pull``, ``$pullAll``, ``$currentDate`` and ``$rename`` are implemented here
(the library mishandles paths through arrays). Also the positional ``$`` resolution and the
document an upsert starts from.
"""

from __future__ import annotations

import copy
import datetime
import operator
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.timestamp import Timestamp

from runtime.embedded.arithmetic import numeric_rank
from runtime.embedded.comparison import bson_equal, bson_type_name
from runtime.embedded.engine_support import INT32_MAX, INT32_MIN, mm_collection, set_path
from runtime.embedded.errors import ErrorCode, WriteError
from runtime.embedded.ordering import MISSING
from runtime.embedded.query_operators import first_matching_index, matches


def _numeric_result(a: Any, b: Any, op: Callable[[Any, Any], Any]) -> Any:
    """Apply ``op`` keeping MongoDB's result type (int32 -> int64 on overflow, double wins)."""
    for value in (a, b):
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
            raise WriteError(ErrorCode.TypeMismatch,
                             f"Cannot apply arithmetic to non-numeric value {value!r}")
    if isinstance(a, Decimal128) or isinstance(b, Decimal128):
        da = a.to_decimal() if isinstance(a, Decimal128) else Decimal(str(a))
        db = b.to_decimal() if isinstance(b, Decimal128) else Decimal(str(b))
        return Decimal128(op(da, db))
    if isinstance(a, float) or isinstance(b, float):
        return float(op(a, b))
    result = op(int(a), int(b))
    if isinstance(a, Int64) or isinstance(b, Int64) or not INT32_MIN <= result <= INT32_MAX:
        if not -(2**63) <= result < 2**63:
            raise WriteError(ErrorCode.BadValue, "integer overflow")
        return Int64(result)
    return int(result)


_ARITH_VERBS = {"$inc": "increment", "$mul": "multiply"}


def _arith_updater(name: str, op: Callable[[Any, Any], Any],
                   missing: Callable[[Any], Any]) -> Any:
    def updater(doc: Any, field_name: str, value: Any, codec_options: Any = None) -> None:
        if numeric_rank(value) is None:
            raise WriteError(ErrorCode.TypeMismatch,
                             f"Cannot {_ARITH_VERBS[name]} with non-numeric argument: "
                             f"{{{field_name}: {value!r}}}")
        current = doc.get(field_name, MISSING) if isinstance(doc, dict) else MISSING
        if current is not MISSING and numeric_rank(current) is None:
            raise WriteError(ErrorCode.TypeMismatch,
                             f"Cannot apply {name} to a value of non-numeric type. The "
                             f"field '{field_name}' has non-numeric type "
                             f"{bson_type_name(current)}")
        if isinstance(doc, dict):
            if field_name in doc:
                doc[field_name] = _numeric_result(doc[field_name], value, op)
            else:
                _numeric_result(0, value, op)  # validates the operand
                doc[field_name] = missing(value)
        elif isinstance(doc, list):
            index = int(field_name)
            if index < len(doc):
                doc[index] = _numeric_result(doc[index], value, op)
            else:
                doc.extend([None] * (index + 1 - len(doc)))
                doc[index] = missing(value)

    return updater


def _zero_like(value: Any) -> Any:
    if isinstance(value, Decimal128):
        return Decimal128("0")
    if isinstance(value, float):
        return 0.0
    if isinstance(value, Int64):
        return Int64(0)
    return 0


# mongomock-ng keeps its operators in tables; the gaps are filled by registering in them.
mm_collection._updaters["$inc"] = _arith_updater("$inc", operator.add, lambda v: v)
mm_collection._updaters["$mul"] = _arith_updater("$mul", operator.mul, _zero_like)

# -- update operators implemented here (mongomock-ng mishandles paths through arrays) -----------


def _container(doc: dict[str, Any], path: str, create: bool) -> tuple[Any, str | int] | None:
    """The dict or list holding the last part of ``path`` and that part's key; None if a part
    is missing (and not ``create``d). Array elements are addressed by numeric parts."""
    parts = path.split(".")
    current: Any = doc
    for part in parts[:-1]:
        if isinstance(current, list) and part.isdigit():
            index = int(part)
            if index >= len(current):
                if not create:
                    return None
                current.extend([None] * (index + 1 - len(current)))
                current[index] = {}
            current = current[index]
        elif isinstance(current, dict):
            if part not in current:
                if not create:
                    return None
                current[part] = {}
            current = current[part]
        else:
            return None
    last = parts[-1]
    if isinstance(current, list) and last.isdigit():
        return current, int(last)
    if isinstance(current, dict):
        return current, last
    return None


def _get_in(container: Any, key: str | int) -> Any:
    if isinstance(container, list):
        assert isinstance(key, int)
        return container[key] if key < len(container) else MISSING
    return container.get(key, MISSING)


def _put_in(container: Any, key: str | int, value: Any) -> None:
    if isinstance(container, list):
        assert isinstance(key, int)
        container.extend([None] * (key + 1 - len(container)))
    container[key] = value


def _array_at(doc: dict[str, Any], path: str, operator_name: str,
              create: bool) -> list[Any] | None:
    found = _container(doc, path, create)
    if found is None:
        return None
    container, key = found
    value = _get_in(container, key)
    if value is MISSING:
        if not create:
            return None
        value = []
        _put_in(container, key, value)
    if not isinstance(value, list):
        raise WriteError(ErrorCode.BadValue,
                         f"Cannot apply {operator_name} to non-array field. Field named "
                         f"'{path.rsplit('.', 1)[-1]}' has non-array type "
                         f"{bson_type_name(value)}")
    return value


def _add_to_set(doc: dict[str, Any], path: str, value: Any, variables: dict[str, Any]) -> None:
    values = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
    if not isinstance(values, list):
        raise WriteError(ErrorCode.BadValue, "The argument to $each in $addToSet must be an array")
    array = _array_at(doc, path, "$addToSet", create=True)
    assert array is not None
    for item in values:
        if not any(bson_equal(existing, item) for existing in array):
            array.append(copy.deepcopy(item))


def _pull_condition(condition: Any, variables: dict[str, Any]) -> Callable[[Any], bool]:
    if isinstance(condition, dict) and condition:
        if all(key.startswith("$") for key in condition) and not any(
            key in ("$and", "$or", "$nor", "$expr") for key in condition
        ):
            return lambda element: matches({"v": condition}, {"v": element}, variables)
        return lambda element: isinstance(element, dict) and matches(condition, element,
                                                                      variables)
    return lambda element: bson_equal(element, condition)


def _pull(doc: dict[str, Any], path: str, condition: Any, variables: dict[str, Any]) -> None:
    array = _array_at(doc, path, "$pull", create=False)
    if array is not None:
        remove = _pull_condition(condition, variables)
        array[:] = [element for element in array if not remove(element)]


def _pull_all(doc: dict[str, Any], path: str, values: Any, variables: dict[str, Any]) -> None:
    if not isinstance(values, list):
        raise WriteError(ErrorCode.BadValue, f"$pullAll requires an array argument but was given a "
                         f"{bson_type_name(values)}")
    array = _array_at(doc, path, "$pullAll", create=False)
    if array is not None:
        array[:] = [e for e in array if not any(bson_equal(e, v) for v in values)]


def _current_date(doc: dict[str, Any], path: str, spec: Any, variables: dict[str, Any]) -> None:
    kind = "date"
    if isinstance(spec, dict):
        kind = spec.get("$type", "")
        if kind not in ("date", "timestamp"):
            raise WriteError(ErrorCode.BadValue,
                             "The '$type' string field is required to be 'date' or "
                             "'timestamp': {$currentDate: {field : {$type: 'date'}}}")
    elif not isinstance(spec, bool):
        raise WriteError(ErrorCode.BadValue,
                         f"{spec!r} is not valid type for $currentDate. Please use a "
                         "boolean ('true') or a $type expression ({$type: 'timestamp/date'}).")
    now = variables.get("NOW")
    if not isinstance(now, datetime.datetime):
        now = _millisecond_now()
    value: Any = now
    if kind == "timestamp":
        cluster_time = variables.get("CLUSTER_TIME")
        value = cluster_time if isinstance(cluster_time, Timestamp) else Timestamp(now, 1)
    found = _container(doc, path, create=True)
    if found is not None:
        _put_in(found[0], found[1], value)


def _through_array(doc: dict[str, Any], path: str) -> bool:
    current: Any = doc
    for part in path.split(".")[:-1]:
        if isinstance(current, list):
            return True
        if not isinstance(current, dict) or part not in current:
            return False
        current = current[part]
    return isinstance(current, list)


def _rename(doc: dict[str, Any], source: str, target: Any, variables: dict[str, Any]) -> None:
    if _through_array(doc, source) or _through_array(doc, str(target)):
        raise WriteError(ErrorCode.BadValue,
                         f"The source and target field for $rename must not be array "
                         f"elements: {source}")
    found = _container(doc, source, create=False)
    if found is None:
        return
    container, key = found
    value = _get_in(container, key)
    if value is MISSING:
        return
    del container[key]
    destination = _container(doc, str(target), create=True)
    if destination is not None:
        _put_in(destination[0], destination[1], value)


OWN_OPERATORS: dict[str, Callable[[dict[str, Any], str, Any, dict[str, Any]], None]] = {
    "$addToSet": _add_to_set,
    "$pull": _pull,
    "$pullAll": _pull_all,
    "$currentDate": _current_date,
    "$rename": _rename,
}


def resolve_positional(doc: dict[str, Any], update: dict[str, Any], query: dict[str, Any],
                        variables: dict[str, Any]) -> dict[str, Any]:
    """Replace the positional ``$`` part of update paths by the index the query matched."""
    if not any(part == "$" for fields in update.values() for path in fields
               for part in path.split(".")):
        return update
    resolved: dict[str, Any] = {}
    for op_name, fields in update.items():
        new_fields: dict[str, Any] = {}
        for path, value in fields.items():
            parts = path.split(".")
            if "$" in parts:
                at = parts.index("$")
                array_path = ".".join(parts[:at])
                index = first_matching_index(doc, array_path, query, variables)
                if index is None:
                    raise WriteError(ErrorCode.BadValue,
                                     "The positional operator did not find the match needed "
                                     "from the query.")
                path = ".".join([*parts[:at], str(index), *parts[at + 1:]])
            new_fields[path] = value
        resolved[op_name] = new_fields
    return resolved


def _millisecond_now() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


#: Value types that are immutable: an upsert's seed may share them with the query.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), ObjectId, datetime.datetime, Int64,
                        Decimal128, Timestamp, bytes})


def _copied(value: Any) -> Any:
    """``value`` for the seed document: containers copied, immutable scalars shared."""
    return value if type(value) in _IMMUTABLE else copy.deepcopy(value)


def upsert_seed(query: dict[str, Any]) -> dict[str, Any]:
    """The document an upsert starts from: the query's equality fields."""
    seed: dict[str, Any] = {}

    def take(q: dict[str, Any]) -> None:
        for key, value in q.items():
            if key == "$and" and isinstance(value, list):
                for part in value:
                    if isinstance(part, dict):
                        take(part)
                continue
            if key.startswith("$"):
                continue
            if isinstance(value, dict) and value and next(iter(value)).startswith("$"):
                if "$eq" in value:
                    set_path(seed, key, _copied(value["$eq"]))
                continue
            set_path(seed, key, _copied(value))

    take(query)
    return seed


