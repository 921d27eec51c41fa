"""Regular expressions that cannot stall the server.

MongoDB matches with PCRE under a match limit, so a pathological pattern fails instead of running
for ever. Python's :mod:`re` has neither a match limit nor a timeout, and the server evaluates
queries on its event loop, so one catastrophic backtrack (``^(a+)+$`` against ``"aaaa…!"``) would
block every client. The embedded server therefore refuses, before matching, the pattern shape that
backtracks exponentially: a repetition nested inside another repetition (``(a+)+``, ``(a*)*``,
``(\\w+\\s?)*``, ``(.*a){20}``). Such a pattern is answered with MongoDB's error for a regex
it cannot run (BadValue 2 for ``$regex`` in a query, 51091 for the ``$regexMatch`` family).
Alternations of overlapping branches under a repetition (``(a|a)*``) are not detected.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

from runtime.embedded.errors import CommandError

# The parser behind :mod:`re` (private, but stable since Python 3.11; untyped).
_sre_parse: Any = importlib.import_module("re._parser")
_sre_constants: Any = importlib.import_module("re._constants")

QUERY_CODE = 2
EXPRESSION_CODE = 51091
_REPEATS = (_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT, _sre_constants.POSSESSIVE_REPEAT)


def check_pattern(pattern: Any, code: int = QUERY_CODE) -> None:
    """Raise ``code`` if ``pattern`` (a string) would backtrack exponentially."""
    # type() rather than isinstance(): BSON JavaScript code decodes as an unhashable str subclass.
    if type(pattern) is str and _nested_repeat(pattern):
        raise CommandError(code, f"Regular expression is too complex to match: '{pattern}' "
                           "repeats a group that itself repeats (catastrophic backtracking)")


@functools.lru_cache(maxsize=512)
def _nested_repeat(pattern: str) -> bool:
    """Whether ``pattern`` nests a repetition inside a repetition (memoised per pattern)."""
    if "+" not in pattern and "*" not in pattern and "{" not in pattern:
        return False
    try:
        parsed = _sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return False  # the matcher reports an invalid pattern itself
    return _has_nested(list(parsed), inside_repeat=False)


def _has_nested(items: list[Any], inside_repeat: bool) -> bool:
    """Whether the parsed ``items`` repeat something that repeats."""
    for op, argument in items:
        if op in _REPEATS:
            _low, high, body = argument
            repeats = high is _sre_constants.MAXREPEAT or high > 1
            if repeats and inside_repeat:
                return True
            if _has_nested(list(body), inside_repeat or repeats):
                return True
        elif op is _sre_constants.SUBPATTERN:
            if _has_nested(list(argument[-1]), inside_repeat):
                return True
        elif op is _sre_constants.BRANCH:
            if any(_has_nested(list(branch), inside_repeat) for branch in argument[1]):
                return True
        elif op in (_sre_constants.ASSERT, _sre_constants.ASSERT_NOT) \
                and _has_nested(list(argument[1]), inside_repeat):
            return True
    return False
