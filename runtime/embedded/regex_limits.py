"""User regular expressions: compiled once, matched under a time budget.

MongoDB matches with PCRE2 under a match limit: every pattern is accepted, and a match that
exceeds the limit fails. Python's :mod:`re` has no limit, and the server evaluates queries on its
event loop, so one catastrophic backtrack (``^(a|aa)+$`` against ``"aaaa…!"``) would block every
client. Every user pattern is therefore compiled here with the :mod:`regex` package (``re``
syntax) and each match gets :data:`MATCH_BUDGET_SECONDS`, or less when the command's
``maxTimeMS`` runs out first. What happens past the budget follows MongoDB's own handling of the
match limit:

* in a query (``$regex``, a regex value, ``$in``, ``$match``), the value does not match, as in
  MongoDB, where a failed PCRE match counts as no match;
* in ``$regexMatch``/``$regexFind``/``$regexFindAll``, the command fails with 51156
  (:func:`expression_search`);
* past the command's ``maxTimeMS``, it fails with MaxTimeMSExpired (50).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import regex
from bson import Regex

from runtime.embedded import deadlines
from runtime.embedded.errors import CommandError, ErrorCode

log = logging.getLogger(__name__)

#: Wall-clock time one match may take (MongoDB bounds PCRE2 by steps instead).
MATCH_BUDGET_SECONDS = 0.1
#: "Regular expression is invalid" in a query filter.
INVALID_QUERY_CODE = ErrorCode.Location51091
#: "Error occurred while executing the regular expression" in an aggregation expression.
EXECUTION_ERROR_CODE = ErrorCode.Location51156
#: The option flags MongoDB knows (``u`` is implied: patterns are always Unicode).
FLAGS = regex.IGNORECASE | regex.MULTILINE | regex.DOTALL | regex.VERBOSE | regex.UNICODE

Pattern = regex.Pattern[str]


class BudgetExceeded(Exception):
    """One match ran past :data:`MATCH_BUDGET_SECONDS` (MongoDB: PCRE2's match limit)."""


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str, flags: int = 0) -> Pattern:
    """``pattern`` compiled (memoised); raises :class:`regex.error` if it is invalid."""
    return regex.compile(pattern, (flags & FLAGS) | regex.VERSION0)


def search(compiled: Pattern, text: str, pos: int = 0) -> regex.Match[str] | None:
    """``compiled.search(text, pos)`` within the budget: :class:`BudgetExceeded` past it,
    MaxTimeMSExpired (50) if the command's deadline comes first."""
    budget = MATCH_BUDGET_SECONDS
    left = deadlines.remaining()
    if left is not None and left < budget:
        budget = max(left, 0.001)
    try:
        return compiled.search(text, pos, timeout=budget)
    except TimeoutError:
        deadlines.check()
        raise BudgetExceeded(compiled.pattern) from None


def query_pattern(operand: Any) -> Pattern:
    """The compiled form of a query's ``$regex`` operand (a string, ``re.Pattern`` or
    ``bson.Regex``); 51091 "Regular expression is invalid" if it does not compile."""
    if isinstance(operand, Regex | re.Pattern):
        pattern, flags = operand.pattern, int(operand.flags)
    else:
        pattern, flags = operand, 0
    if not isinstance(pattern, str):
        raise CommandError(ErrorCode.BadValue, "$regex has to be a string")
    if "\0" in pattern:
        raise CommandError(ErrorCode.BadValue,
                           "Regular expression cannot contain an embedded null byte")
    try:
        return compile_pattern(pattern, flags)
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        raise CommandError(INVALID_QUERY_CODE, f"Regular expression is invalid: {exc}") from exc


def query_search(compiled: Pattern, text: str) -> bool:
    """Whether ``compiled`` finds a match in ``text``; past the budget, no match (MongoDB)."""
    try:
        return search(compiled, text) is not None
    except BudgetExceeded:
        _report_once(compiled.pattern)
        return False


def expression_search(compiled: Pattern, text: str, pos: int, operator: str
                      ) -> regex.Match[str] | None:
    """:func:`search` for ``operator`` (``$regexFind``...): 51156 past the budget."""
    try:
        return search(compiled, text, pos)
    except BudgetExceeded:
        raise CommandError(EXECUTION_ERROR_CODE, "Error occurred while executing the regular "
                           f"expression in {operator}. Result code: match limit exceeded"
                           ) from None


@functools.lru_cache(maxsize=64)
def _report_once(pattern: str) -> None:
    # Memoised: a scan may hit the budget on many documents; the log says it once per pattern.
    log.warning("regular expression %r exceeded its match budget (%d ms): the value counts "
                "as not matching, as with MongoDB's match limit", pattern[:200],
                MATCH_BUDGET_SECONDS * 1000)
