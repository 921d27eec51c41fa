"""MongoDB's ``$jsonSchema``: the query operator and collection validators (manual:
"$jsonSchema", "Schema Validation").

MongoDB implements JSON Schema draft 4 without ``$ref``, ``$schema``, ``default``,
``definitions``, ``format`` and ``id`` (refused: FailedToParse, 9), adds ``bsonType`` (BSON type
aliases, one or a list), and its ``type`` knows no ``integer``. The keywords are checked by the
``jsonschema`` library's draft-4 validator, extended with ``bsonType`` and with a type checker
for decoded BSON values (``Int64``/``Decimal128`` are numbers, ``bool`` is not, ``datetime`` is a
date). A schema is compiled once per query or collection (:func:`compile_schema`).

A collection created with ``encryptedFields`` (Queryable Encryption) refuses a plaintext value
in an encrypted field with the same error, as mongod does. A collection's ``validator`` (any
query filter, usually ``$jsonSchema``) is applied by
:func:`validation_error` on inserts and updates with MongoDB's ``validationLevel``
(``strict``: every write; ``moderate``: updates of documents that were valid; ``off``) and
``validationAction`` (``error``: DocumentValidationFailure 121 with ``errInfo``; ``warn``: the
write goes on and a warning is logged).
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import jsonschema
from bson import Regex
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from jsonschema import Draft4Validator, validators
from jsonschema.exceptions import ValidationError

from runtime.embedded.errors import CommandError, ErrorCode, WriteError

log = logging.getLogger("runtime.embedded")

UNSUPPORTED_KEYWORDS = frozenset({"$ref", "$schema", "default", "definitions", "format", "id"})
KEYWORDS = frozenset({
    "bsonType", "type", "required", "properties", "patternProperties", "additionalProperties",
    "minProperties", "maxProperties", "dependencies", "items", "additionalItems", "minItems",
    "maxItems", "uniqueItems", "enum", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern", "allOf", "anyOf",
    "oneOf", "not", "title", "description", "encrypt", "encryptMetadata",
})
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "dependencies")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_JSON_TYPES = frozenset({"object", "array", "number", "boolean", "string", "null"})


def _is_int32(value: Any) -> bool:
    return type(value) is int and -(2**31) <= value < 2**31


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float | Decimal128) and not isinstance(value, bool))


BSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "double": lambda v: isinstance(v, float),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "binData": lambda v: isinstance(v, bytes | Binary),
    "objectId": lambda v: isinstance(v, ObjectId),
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, datetime.datetime),
    "null": lambda v: v is None,
    "regex": lambda v: isinstance(v, Regex | re.Pattern),
    "int": _is_int32,
    "timestamp": lambda v: isinstance(v, Timestamp),
    "long": lambda v: isinstance(v, Int64) or (type(v) is int and not _is_int32(v)),
    "decimal": lambda v: isinstance(v, Decimal128),
    "minKey": lambda v: isinstance(v, MinKey),
    "maxKey": lambda v: isinstance(v, MaxKey),
    "number": _is_number,
}

_TYPE_CHECKER = Draft4Validator.TYPE_CHECKER.redefine_many({
    "object": lambda _checker, v: isinstance(v, dict),
    "array": lambda _checker, v: isinstance(v, list),
    "number": lambda _checker, v: _is_number(v),
    "string": lambda _checker, v: isinstance(v, str),
    "boolean": lambda _checker, v: isinstance(v, bool),
    "null": lambda _checker, v: v is None,
})


def _bson_type(validator: Any, aliases: Any, instance: Any,
               schema: dict[str, Any]) -> Iterator[ValidationError]:
    names = aliases if isinstance(aliases, list) else [aliases]
    if not any(BSON_TYPES[name](instance) for name in names):
        yield ValidationError(f"value is not of bsonType {aliases!r}")


def _numeric(value: Any) -> Any:
    """Decimal128 compares through Decimal; mixed with floats, both become Decimal."""
    return value.to_decimal() if isinstance(value, Decimal128) else value


def _pair(instance: Any, bound: Any) -> tuple[Any, Any]:
    number, limit = _numeric(instance), _numeric(bound)
    if isinstance(number, Decimal) != isinstance(limit, Decimal):
        number, limit = Decimal(str(number)), Decimal(str(limit))
    return number, limit


def _minimum(validator: Any, bound: Any, instance: Any,
             schema: dict[str, Any]) -> Iterator[ValidationError]:
    if _is_number(instance):
        number, limit = _pair(instance, bound)
        if number < limit or (schema.get("exclusiveMinimum") is True and number == limit):
            yield ValidationError(f"{instance!r} is less than the minimum of {bound!r}")


def _maximum(validator: Any, bound: Any, instance: Any,
             schema: dict[str, Any]) -> Iterator[ValidationError]:
    if _is_number(instance):
        number, limit = _pair(instance, bound)
        if number > limit or (schema.get("exclusiveMaximum") is True and number == limit):
            yield ValidationError(f"{instance!r} is greater than the maximum of {bound!r}")


def _multiple_of(validator: Any, bound: Any, instance: Any,
                 schema: dict[str, Any]) -> Iterator[ValidationError]:
    if _is_number(instance):
        number, limit = _pair(instance, bound)
        if limit and number % limit != 0:
            yield ValidationError(f"{instance!r} is not a multiple of {bound!r}")


_Validator = validators.extend(  # type: ignore[no-untyped-call]
    Draft4Validator,
    validators={"bsonType": _bson_type, "minimum": _minimum, "maximum": _maximum,
                "multipleOf": _multiple_of},
    type_checker=_TYPE_CHECKER,
)


def _bad(message: str) -> CommandError:
    return CommandError(ErrorCode.FailedToParse, message)


def _check_keywords(schema: Any, path: str) -> None:
    """Refuse what MongoDB refuses, naming the keyword and where it is."""
    if not isinstance(schema, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           f"$jsonSchema{path} must be an object, not {type(schema).__name__}")
    for keyword, value in schema.items():
        where = f"{path}.{keyword}" if path else keyword
        if keyword in UNSUPPORTED_KEYWORDS:
            raise _bad(f"$jsonSchema keyword '{keyword}' is not currently supported")
        if keyword not in KEYWORDS:
            raise _bad(f"Unknown $jsonSchema keyword: {keyword}")
        if keyword == "type":
            names = value if isinstance(value, list) else [value]
            for name in names:
                if name == "integer":
                    raise _bad("$jsonSchema type 'integer' is not currently supported; use "
                               "bsonType 'int' or 'long'")
                if name not in _JSON_TYPES:
                    raise _bad(f"Unknown type name alias: {name} (in {where})")
        if keyword == "bsonType":
            names = value if isinstance(value, list) else [value]
            for name in names:
                if name not in BSON_TYPES:
                    raise CommandError(ErrorCode.BadValue,
                                       f"Unknown type name alias: {name} (in {where})")
        if keyword in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, dict):
                    _check_keywords(sub, f"{where}.{name}")
        if keyword in _SUBSCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                raise _bad(f"$jsonSchema keyword '{keyword}' must be a non-empty array")
            for i, sub in enumerate(value):
                _check_keywords(sub, f"{where}.{i}")
        if keyword in ("not", "additionalProperties", "additionalItems") and isinstance(
                value, dict):
            _check_keywords(value, where)
        if keyword == "items":
            for i, sub in enumerate(value if isinstance(value, list) else [value]):
                _check_keywords(sub, f"{where}.{i}" if isinstance(value, list) else where)


@dataclass(frozen=True)
class CompiledSchema:
    """A checked ``$jsonSchema``, ready to test documents."""

    schema: dict[str, Any]
    validator: Any

    def matches(self, document: dict[str, Any]) -> bool:
        """Whether ``document`` satisfies the schema."""
        return bool(self.validator.is_valid(document))

    def failures(self, document: dict[str, Any]) -> list[dict[str, Any]]:
        """The rules ``document`` breaks, in the spirit of MongoDB's ``errInfo.details``."""
        return [{"operatorName": error.validator, "specifiedAs": {
                    str(error.validator): error.validator_value},
                 "reason": error.message,
                 "path": ".".join(str(p) for p in error.absolute_path)}
                for error in self.validator.iter_errors(document)]


_CACHE: dict[int, tuple[Any, CompiledSchema]] = {}


def compile_schema(schema: Any) -> CompiledSchema:
    """Check and compile a ``$jsonSchema`` operand (cached per operand object)."""
    cached = _CACHE.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    _check_keywords(schema, "")
    try:
        _Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _bad(f"invalid $jsonSchema: {exc.message}") from None
    compiled = CompiledSchema(schema, _Validator(schema))
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[id(schema)] = (schema, compiled)
    return compiled


def json_schema_operator(document: dict[str, Any], schema: Any) -> bool:
    """The top-level query operator ``{$jsonSchema: schema}`` for one document."""
    return compile_schema(schema).matches(document)


def check_validator_options(options: dict[str, Any]) -> None:
    """Validate ``validationLevel``/``validationAction`` as ``create``/``collMod`` do."""
    level = options.get("validationLevel")
    if level is not None and level not in ("off", "strict", "moderate"):
        raise CommandError(ErrorCode.BadValue,
                           f"Enumeration value '{level}' for field 'validationLevel' is not a "
                           "valid value; use 'off', 'strict' or 'moderate'")
    action = options.get("validationAction")
    if action is not None and action not in ("error", "warn"):
        raise CommandError(ErrorCode.BadValue,
                           f"Enumeration value '{action}' for field 'validationAction' is not "
                           "a valid value; use 'error' or 'warn'")
    validator = options.get("validator")
    if isinstance(validator, dict) and "$jsonSchema" in validator:
        compile_schema(validator["$jsonSchema"])


ENCRYPTED_SUBTYPE = 6  # BSON binary subtype of Queryable Encryption payloads


def _unencrypted_fields(options: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """Paths of ``encryptedFields`` holding a value that is not an encrypted payload."""
    spec = options.get("encryptedFields")
    fields = spec.get("fields") if isinstance(spec, dict) else None
    wrong: list[str] = []
    for field in fields if isinstance(fields, list) else []:
        path = field.get("path") if isinstance(field, dict) else None
        if type(path) is not str:
            continue
        value: Any = document
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not (isinstance(value, Binary)
                                      and value.subtype == ENCRYPTED_SUBTYPE):
            wrong.append(path)
    return wrong


def validation_error(options: dict[str, Any], new: dict[str, Any],
                     old: dict[str, Any] | None,
                     matches: Callable[[dict[str, Any], dict[str, Any]], bool]
                     ) -> WriteError | None:
    """The DocumentValidationFailure (121) a write of ``new`` (replacing ``old``) gets from the
    collection's validator, or None. ``matches`` is the engine's filter matcher."""
    unencrypted = _unencrypted_fields(options, new)
    if unencrypted:  # Queryable Encryption: the server refuses plaintext in encrypted fields
        return WriteError(ErrorCode.DocumentValidationFailure, "Document failed validation",
                          extra={"errInfo": {"failingDocumentId": new.get("_id"), "details": {
                              "operatorName": "encryptedFields",
                              "reason": f"fields {unencrypted} must hold encrypted payloads "
                                        "(BinData subtype 6)"}}})
    validator = options.get("validator")
    if not isinstance(validator, dict) or not validator:
        return None
    level = options.get("validationLevel", "strict")
    if level == "off":
        return None
    if matches(validator, new):
        return None
    if level == "moderate" and old is not None and not matches(validator, old):
        return None  # moderate: documents that already broke the rules may still change
    details: dict[str, Any] = {"operatorName": "$and", "clausesNotSatisfied": []}
    schema = validator.get("$jsonSchema")
    if isinstance(schema, dict) and len(validator) == 1:
        details = {"operatorName": "$jsonSchema",
                   "schemaRulesNotSatisfied": compile_schema(schema).failures(new)}
        if "title" in schema:
            details["title"] = schema["title"]
    info = {"failingDocumentId": new.get("_id"), "details": details}
    if options.get("validationAction", "error") == "warn":
        log.warning("Document would fail validation: %s", info)
        return None
    return WriteError(ErrorCode.DocumentValidationFailure, "Document failed validation",
                      extra={"errInfo": info})
