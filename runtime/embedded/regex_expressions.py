"""``$regexMatch``, ``$regexFind`` and ``$regexFindAll`` as MongoDB evaluates them.

Arguments are checked in MongoDB's order and with its codes (51103-51111); every match runs
under the budget of :mod:`runtime.embedded.regex_limits`, so a catastrophic pattern fails with
51156 instead of stalling the server. A handler takes the engine's expression parser and the
operator's argument, as the engine's other expression overrides do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import regex
from bson import Regex

from runtime.embedded import deadlines, regex_limits
from runtime.embedded.errors import CommandError, ErrorCode

_ARGUMENTS = ("input", "regex", "options")
_FLAGS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL, "x": regex.VERBOSE,
          "u": 0}
#: MongoDB's cap on the matches one ``$regexFindAll`` collects (``BufferMaxSize``, 64 MiB).
MAX_FIND_ALL_BYTES = 64 * 1024 * 1024
# What one match document costs beyond its strings, as counted against that cap.
_MATCH_OVERHEAD_BYTES = 64
_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "bool", int: "int",
               float: "double", type(None): "null"}


# The engine's "missing" marker, registered by :func:`handlers` (import order: engine loads us).
_MISSING: list[Any] = [object()]


def _nullish(value: Any) -> bool:
    return value is None or value is _MISSING[0]


def _prepare(operator: str, parser: Any, operand: Any) -> tuple[str | None, Any]:
    """The input string and compiled pattern (either ``None`` when nullish), or MongoDB's
    error for malformed arguments."""
    if not isinstance(operand, dict):
        name = _TYPE_NAMES.get(type(operand), type(operand).__name__)
        raise CommandError(ErrorCode.Location51103,
                           f"{operator} expects an object of named arguments but found:"
                           f" {name}")
    for key in operand:
        if key not in _ARGUMENTS:
            raise CommandError(ErrorCode.Location31024,
                               f"{operator} found an unknown argument: {key}")
    for key, code in (("input", 31022), ("regex", 31023)):
        if key not in operand:
            raise CommandError(code, f"{operator} requires '{key}' parameter")
    text = parser.parse(operand["input"])
    pattern = parser.parse(operand["regex"])
    options = parser.parse(operand["options"]) if "options" in operand else None
    compiled = _compile(operator, pattern, options)
    if not _nullish(text) and not isinstance(text, str):
        raise CommandError(ErrorCode.Location51104,
                           f"{operator} needs 'input' to be of type string")
    return (None if _nullish(text) else text), compiled


def _compile(operator: str, pattern: Any, options: Any) -> Any:
    if not (_nullish(pattern) or isinstance(pattern, str | Regex | re.Pattern)):
        raise CommandError(ErrorCode.Location51105,
                           f"{operator} needs 'regex' to be of type string or regex")
    if not _nullish(options) and not isinstance(options, str):
        raise CommandError(ErrorCode.Location51106,
                           f"{operator} needs 'options' to be of type string")
    flags = 0
    if not isinstance(pattern, str) and not _nullish(pattern):
        flags = int(pattern.flags) & regex_limits.FLAGS & ~regex.UNICODE
        if flags and not _nullish(options):
            raise CommandError(ErrorCode.Location51107,
                               f"{operator}: found regex option(s) specified in both "
                               "'regex' and 'option' fields")
        pattern = pattern.pattern
    if isinstance(pattern, str) and "\0" in pattern:
        raise CommandError(ErrorCode.Location51109,
                           f"{operator}: regular expression cannot contain an embedded "
                           "null byte")
    if isinstance(options, str):
        if "\0" in options:
            raise CommandError(ErrorCode.Location51110,
                               f"{operator}: regular expression options cannot contain "
                               "an embedded null byte")
        for letter in options:
            if letter not in _FLAGS:
                raise CommandError(ErrorCode.Location51108,
                                   f"{operator} invalid flag in regex options: {letter}")
            flags |= _FLAGS[letter]
    if not isinstance(pattern, str):
        return None
    try:
        return regex_limits.compile_pattern(pattern, flags)
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        raise CommandError(ErrorCode.Location51111, f"Invalid Regex in {operator}: {exc}") from exc


def _match_document(match: regex.Match[str]) -> dict[str, Any]:
    return {"match": match.group(0), "idx": match.start(), "captures": list(match.groups())}


def regex_match(parser: Any, operand: Any) -> bool:
    """``$regexMatch``: whether the pattern occurs in the input (false when either is null)."""
    text, compiled = _prepare("$regexMatch", parser, operand)
    if text is None or compiled is None:
        return False
    return regex_limits.expression_search(compiled, text, 0, "$regexMatch") is not None


def regex_find(parser: Any, operand: Any) -> dict[str, Any] | None:
    """``$regexFind``: the first match as ``{match, idx, captures}``, or null."""
    text, compiled = _prepare("$regexFind", parser, operand)
    if text is None or compiled is None:
        return None
    found = regex_limits.expression_search(compiled, text, 0, "$regexFind")
    return None if found is None else _match_document(found)


def regex_find_all(parser: Any, operand: Any) -> list[dict[str, Any]]:
    """``$regexFindAll``: every non-overlapping match; after an empty match the search resumes
    one character further, as in MongoDB."""
    text, compiled = _prepare("$regexFindAll", parser, operand)
    if text is None or compiled is None:
        return []
    out: list[dict[str, Any]] = []
    position = total = 0
    while position <= len(text):
        deadlines.tick()
        found = regex_limits.expression_search(compiled, text, position, "$regexFindAll")
        if found is None:
            break
        document = _match_document(found)
        total += _MATCH_OVERHEAD_BYTES + len(document["match"]) + sum(
            len(c) for c in document["captures"] if c is not None)
        if total > MAX_FIND_ALL_BYTES:
            raise CommandError(ErrorCode.Location51151,
                               "$regexFindAll: the size of buffer to store output "
                               "exceeded the 64MB limit")
        out.append(document)
        position = found.end() + 1 if found.end() == found.start() else found.end()
    return out


def handlers(missing: Any) -> dict[str, Callable[[Any, Any], Any]]:
    """The three operators by name; ``missing`` is the engine's marker for a missing value."""
    _MISSING[0] = missing
    return {"$regexMatch": regex_match, "$regexFind": regex_find,
            "$regexFindAll": regex_find_all}
