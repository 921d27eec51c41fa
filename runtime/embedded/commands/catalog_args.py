"""Argument checks of the catalog commands, with mongod 7.0's typed errors.

mongod parses these commands with IDL: a field of the wrong type is TypeMismatch (14) naming
``<command>.<field>``, a value out of a validator's range is error 51024, an unknown enum value
is BadValue (2). Every check here raises :class:`CommandError` and never returns a bad value.
"""

from __future__ import annotations

from typing import Any

from runtime.embedded.commands import arguments
from runtime.embedded.commands.arguments import is_number
from runtime.embedded.errors import CommandError, ErrorCode


def wrong_type(field: str, value: Any, expected: str) -> CommandError:
    """The TypeMismatch error for ``field``, which accepts one BSON type."""
    return arguments.wrong_type(field, value, (expected,))


def check_bool(body: dict[str, Any], field: str, command: str) -> None:
    """An optional boolean (mongod's ``safeBool`` also takes numbers)."""
    value = body.get(field)
    if value is not None and not isinstance(value, bool | int | float):
        raise wrong_type(f"{command}.{field}", value, "bool")


def check_doc(body: dict[str, Any], field: str, command: str) -> dict[str, Any] | None:
    """An optional document."""
    value = body.get(field)
    if value is not None and not isinstance(value, dict):
        raise wrong_type(f"{command}.{field}", value, "object")
    return value


def check_string(body: dict[str, Any], field: str, command: str,
                 allowed: tuple[str, ...] = ()) -> None:
    """An optional string, one of ``allowed`` when given (BadValue otherwise)."""
    value = body.get(field)
    if value is None:
        return
    if type(value) is not str:
        raise wrong_type(f"{command}.{field}", value, "string")
    if allowed and value not in allowed:
        raise CommandError(ErrorCode.BadValue, f"Enumeration value '{value}' for field "
                           f"'{command}.{field}' is not a valid value; use one of "
                           + ", ".join(allowed))


def check_number(body: dict[str, Any], field: str, command: str, low: float | None = None,
                 high: float | None = None) -> None:
    """An optional number within ``[low, high]``."""
    value = body.get(field)
    if value is None:
        return
    if not is_number(value):
        raise wrong_type(f"{command}.{field}", value, "long")
    if value != value or (low is not None and value < low) or (
            high is not None and value > high):
        bound = f">= {low:g}" if low is not None else ""
        if high is not None:
            bound += (" and " if bound else "") + f"<= {high:g}"
        raise CommandError(ErrorCode.Location51024, f"BSON field '{command}.{field}' value must "
                           f"be {bound}, actual value '{value}'")


def check_filter(body: dict[str, Any], command: str) -> dict[str, Any] | None:
    """The optional ``filter`` document."""
    return check_doc(body, "filter", command)


def check_pre_and_post_images(body: dict[str, Any], command: str) -> None:
    """``changeStreamPreAndPostImages: {enabled: <bool>}``."""
    option = check_doc(body, "changeStreamPreAndPostImages", command)
    if option is None:
        return
    field = f"{command}.changeStreamPreAndPostImages"
    if "enabled" not in option:
        raise CommandError(ErrorCode.Location40414, f"BSON field '{field}.enabled' is missing "
                           "but a required field")
    if not isinstance(option["enabled"], bool | int | float):
        raise wrong_type(f"{field}.enabled", option["enabled"], "bool")
    unknown = [k for k in option if k != "enabled"]
    if unknown:
        raise CommandError(ErrorCode.Location40415,
                           f"BSON field '{field}.{unknown[0]}' is an unknown field.")


#: 1 PB: the largest capped collection size mongod accepts.
MAX_CAPPED_SIZE = 1024**5
#: A capped collection holds fewer than 2^31 documents.
MAX_CAPPED_DOCS = 2**31 - 1


def check_collection_options(body: dict[str, Any], command: str) -> None:
    """The options ``create`` and ``collMod`` share (and ``create``'s own)."""
    for field in ("capped", "autoIndexId", "temp", "dryRun", "recordPreImages"):
        check_bool(body, field, command)
    for field in ("validator", "collation", "timeseries", "storageEngine",
                  "indexOptionDefaults", "idIndex", "encryptedFields"):
        check_doc(body, field, command)
    check_number(body, "size", command, low=0, high=MAX_CAPPED_SIZE)
    check_number(body, "cappedSize", command, low=0, high=MAX_CAPPED_SIZE)
    check_number(body, "max", command, high=MAX_CAPPED_DOCS)
    check_number(body, "cappedMax", command, high=MAX_CAPPED_DOCS)
    check_number(body, "flags", command)
    check_string(body, "validationLevel", command, ("off", "strict", "moderate"))
    check_string(body, "validationAction", command, ("error", "warn"))
    check_string(body, "viewOn", command)
    pipeline = body.get("pipeline")
    if pipeline is not None and not isinstance(pipeline, list):
        raise wrong_type(f"{command}.pipeline", pipeline, "array")
    clustered = body.get("clusteredIndex")
    if clustered is not None and not isinstance(clustered, bool | dict):
        raise wrong_type(f"{command}.clusteredIndex", clustered, "object")
    ttl = body.get("expireAfterSeconds")
    if ttl is not None and not is_number(ttl) and ttl != "off":
        raise wrong_type(f"{command}.expireAfterSeconds", ttl, "long")
    check_pre_and_post_images(body, command)
