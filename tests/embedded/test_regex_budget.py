"""Regexes are bounded by a match budget, not by refusing patterns; string and array builders
are checked before they allocate (issue 10, item 4).

Reproducers: ``{"name": {"$regex": "^(a+)+$"}}`` against ``"aaaa…!"`` left servers spinning for
20+ minutes; ``^(a|a)*$`` and ``^(a|aa)+$`` were not even detected by the old refusal, which also
refused valid patterns such as ``(\\w+\\s?)*``. ``$concat`` of a 15 MB string 1,000 times built
15 GB before checking the limit.

MongoDB (PCRE2 with a match limit) counts a match that hits the limit as no match in a query, and
fails ``$regexMatch``/``$regexFind``/``$regexFindAll`` with 51156.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bson.regex import Regex
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure
from support import ServerFactory

Doc = dict[str, Any]

SUBJECT = "a" * 40 + "!"
CATASTROPHIC = ["^(a+)+$", "^(a|a)*$", "^(a|aa)+$"]
# Patterns the regex package cannot short-cut: they exhaust any match budget.
EXPONENTIAL = ["^(a|a)*$", "^(a|aa)+$"]
FAST_SECONDS = 5


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    c = db.names
    c.insert_many([{"_id": 1, "name": SUBJECT}, {"_id": 2, "name": "aaaa"},
                   {"_id": 3, "name": "hello big world"}])
    return c


def _error(call: Callable[[], Any]) -> OperationFailure:
    with pytest.raises(OperationFailure) as caught:
        call()
    return caught.value


def _project(coll: Collection[Doc], expression: Any, doc_id: int = 1) -> Any:
    pipeline = [{"$match": {"_id": doc_id}}, {"$project": {"_id": 0, "x": expression}}]
    [doc] = coll.aggregate(pipeline)
    return doc.get("x")


def _ids(cursor: Any) -> list[Any]:
    return sorted(d["_id"] for d in cursor)


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_pattern_in_a_query_does_not_match(
        coll: Collection[Doc], mongodb_uri: str, pattern: str) -> None:
    """find $regex, a regex value, $in and the $match stage answer quickly: the subject that
    exhausts the budget does not match (MongoDB's handling of PCRE's match limit), the others
    match normally, and the server still answers."""
    started = time.monotonic()
    assert _ids(coll.find({"name": {"$regex": pattern}})) == [2]
    assert _ids(coll.find({"name": {"$in": [Regex(pattern), "x"]}})) == [2]
    assert _ids(coll.aggregate([{"$match": {"name": {"$regex": pattern}}}])) == [2]
    assert time.monotonic() - started < FAST_SECONDS
    with MongoClient[Doc](mongodb_uri) as other:
        assert other.admin.command("ping")["ok"] == 1


@pytest.mark.parametrize("operator", ["$regexMatch", "$regexFind", "$regexFindAll"])
@pytest.mark.parametrize("pattern", EXPONENTIAL)
def test_catastrophic_pattern_in_an_expression_fails_with_51156(
        coll: Collection[Doc], mongodb_uri: str, operator: str, pattern: str) -> None:
    """51156 "Error occurred while executing the regular expression in $regexFind...", in a
    projection and in a find's $expr; then the server answers."""
    expression = {operator: {"input": "$name", "regex": pattern}}
    started = time.monotonic()
    error = _error(lambda: _project(coll, expression))
    assert error.code == 51156
    assert f"Error occurred while executing the regular expression in {operator}" in str(error)
    expr = expression if operator == "$regexMatch" else {"$ne": [expression, None]}
    assert _error(lambda: list(coll.find({"$expr": expr}))).code == 51156
    assert time.monotonic() - started < FAST_SECONDS
    with MongoClient[Doc](mongodb_uri) as other:
        assert other.admin.command("ping")["ok"] == 1


def test_nested_repeat_that_can_be_short_cut_answers_quickly(coll: Collection[Doc]) -> None:
    """``^(a+)+$`` fails 51156 in MongoDB; the regex package answers it (no match) at once."""
    started = time.monotonic()
    try:
        assert _project(coll, {"$regexMatch": {"input": "$name", "regex": "^(a+)+$"}}) is False
    except OperationFailure as error:
        assert error.code == 51156
    assert time.monotonic() - started < FAST_SECONDS


def test_nested_quantifier_matches_normally(coll: Collection[Doc]) -> None:
    """``(\\w+\\s?)*`` was refused as "too complex"; it is valid and matches."""
    assert _ids(coll.find({"name": {"$regex": r"^(\w+\s?)*$"}})) == [2, 3]
    found = _project(coll, {"$regexFind": {"input": "$name", "regex": r"(\w+\s?)*"}}, 3)
    assert found == {"match": "hello big world", "idx": 0, "captures": ["world"]}


def test_regex_find_and_find_all(coll: Collection[Doc]) -> None:
    """MongoDB's results: {match, idx (code points), captures (null when unmatched)}; after
    an empty match the search resumes one character further; nullish input or regex."""
    find = {"$regexFind": {"input": "$name", "regex": "(B)(x)?", "options": "i"}}
    assert _project(coll, find, 3) == {"match": "b", "idx": 6, "captures": ["b", None]}
    find_all = {"$regexFindAll": {"input": "$name", "regex": "o"}}
    assert [m["idx"] for m in _project(coll, find_all, 3)] == [4, 11]
    empty = {"$regexFindAll": {"input": "ab", "regex": ""}}
    assert [m["idx"] for m in _project(coll, empty)] == [0, 1, 2]
    assert _project(coll, {"$regexFind": {"input": "$missing", "regex": "a"}}) is None
    assert _project(coll, {"$regexFindAll": {"input": None, "regex": "a"}}) == []
    assert _project(coll, {"$regexMatch": {"input": "$name", "regex": None}}) is False
    unicode = {"$regexFind": {"input": "éé-x", "regex": "x"}}
    assert _project(coll, unicode)["idx"] == 3


REGEX_EXPRESSION_ERRORS: dict[str, tuple[Any, int]] = {
    "not_an_object": ({"$regexFind": 5}, 51103),
    "unknown_argument": ({"$regexFind": {"input": "a", "regex": "a", "x": 1}}, 31024),
    "missing_input": ({"$regexFind": {"regex": "a"}}, 31022),
    "missing_regex": ({"$regexFind": {"input": "a"}}, 31023),
    "input_not_string": ({"$regexFind": {"input": 5, "regex": "a"}}, 51104),
    "regex_not_string": ({"$regexFind": {"input": "a", "regex": 5}}, 51105),
    "options_not_string": ({"$regexFind": {"input": "a", "regex": "a", "options": 5}}, 51106),
    "bad_flag": ({"$regexFindAll": {"input": "a", "regex": "a", "options": "g"}}, 51108),
    "invalid_pattern": ({"$regexMatch": {"input": "a", "regex": "("}}, 51111),
}


@pytest.mark.parametrize("case", sorted(REGEX_EXPRESSION_ERRORS))
def test_regex_expression_errors(coll: Collection[Doc], case: str) -> None:
    expression, code = REGEX_EXPRESSION_ERRORS[case]
    assert _error(lambda: _project(coll, expression)).code == code


def test_invalid_query_pattern_is_51091(coll: Collection[Doc]) -> None:
    """51091 "Regular expression is invalid: ..." (was BadValue 2 from Python's re)."""
    error = _error(lambda: list(coll.find({"name": {"$regex": "("}})))
    assert error.code == 51091 and "Regular expression is invalid" in str(error)


def test_max_time_ms_bounds_many_slow_matches(db: Database[Doc], mongodb_uri: str) -> None:
    """Each match may take the whole budget; over many documents the command still ends at
    its maxTimeMS with MaxTimeMSExpired (50)."""
    coll = db.slow
    coll.insert_many([{"_id": i, "name": SUBJECT} for i in range(60)])
    slow = {"name": {"$regex": "^(a|aa)+$"}}
    started = time.monotonic()
    error = _error(lambda: list(coll.find(slow).max_time_ms(300)))
    assert error.code == 50
    error = _error(lambda: list(coll.aggregate([{"$match": slow}], maxTimeMS=300)))
    assert error.code == 50
    assert time.monotonic() - started < FAST_SECONDS
    with MongoClient[Doc](mongodb_uri) as other:
        assert other.admin.command("ping")["ok"] == 1


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak resident set size
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_builders_fail_before_allocating(fresh_server: ServerFactory) -> None:
    """$concat of a 15 MB string 1,000 times (15 GB), $concatArrays of a million-element array
    1,000 times and $split into 15 million pieces answer ExceededMemoryLimit 146 at once, and
    the server's peak memory stays far below what building them would take."""
    server = fresh_server(in_memory=True)
    assert server.pid is not None
    with MongoClient[Doc](server.uri) as client:
        coll = client.t.big
        coll.insert_one({"_id": 1, "s": "x" * (15 * 1024 * 1024)})
        coll.insert_one({"_id": 2, "a": [0] * 1_000_000})
        started = time.monotonic()
        cases: list[tuple[int, Any]] = [(1, {"$concat": ["$s"] * 1000}),
                                        (2, {"$concatArrays": ["$a"] * 1000}),
                                        (1, {"$split": ["$s", "x"]})]
        for doc_id, expression in cases:
            error = _error(lambda e=expression, i=doc_id: _project(coll, e, i))  # type: ignore[misc]
            assert error.code == 146, expression
        # The same through a find's $expr (the compiled matcher has its own $concatArrays).
        error = _error(lambda: list(coll.find({"$expr": {"$eq": [
            {"$concatArrays": ["$a"] * 1000}, []]}})))
        assert error.code == 146
        assert time.monotonic() - started < FAST_SECONDS
        assert client.admin.command("ping")["ok"] == 1
        # Within the limit, the builders still build.
        assert _project(coll, {"$concat": ["ab", "$s"]}, 1)[:3] == "abx"
    assert _peak_rss_bytes(server.pid) < 1024**3
