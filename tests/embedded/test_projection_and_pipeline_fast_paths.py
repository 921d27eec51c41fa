"""The find projection's and the update pipeline's fast paths give the general paths' results.

A projection of plain top-level names, all 0 or all 1 (``_id`` aside), skips the library's
projection; ``$set``/``$addFields``/``$unset`` pipelines run compiled, with their constants
found once per statement. Each test runs the fast path and the general one (the fast path
switched off) on the same input and compares the outcomes exactly: values, their types, the
order of the fields, and the error's code and message. The generated cases also count how
often the fast path answered by itself, so that a fast path that always falls back fails too.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast
from unittest import mock

import pytest
from bson import Int64, ObjectId, Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from runtime.embedded import compiled_stages, projection, updates
from runtime.embedded.compiled import Unsupported
from runtime.embedded.errors import CommandError, WriteError
from runtime.reactor import Policies, ReactorSpec
from runtime.task_plans import plan_update
from runtime.task_store import CLAIMED_FIELDS, Claimed, TaskStore

Doc = dict[str, Any]
NOW = datetime.datetime(2024, 5, 1, 12, 0, 0)
VARIABLES: Doc = {"NOW": NOW, "CLUSTER_TIME": Timestamp(1_714_564_800, 1)}
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def typed(value: Any) -> Any:
    """``value`` with every type and every field order made part of the comparison."""
    if isinstance(value, dict):
        return ("dict", type(value).__name__, [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, repr(value))


def outcome(run: Callable[[], Any]) -> Any:
    """A result (typed) or an error (its kind, code and message)."""
    try:
        return ("ok", typed(run()))
    except (CommandError, WriteError) as exc:
        return ("error", type(exc).__name__, exc.code, exc.message)


@contextmanager
def general_projection() -> Iterator[None]:
    """Projections take the general path."""
    with mock.patch.object(projection, "_simple_shape", lambda spec: None):
        yield


@contextmanager
def general_pipelines() -> Iterator[None]:
    """Update pipelines take the general engine."""
    with mock.patch.object(compiled_stages, "pipeline_update", lambda pipeline: None):
        yield


# -- projections -------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1), st.floats(allow_nan=False),
    st.text(max_size=4), st.builds(Int64, st.integers(-(2**40), 2**40)),
    st.just(NOW), st.builds(ObjectId))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["x", "y", "z"]), inner, max_size=3)), max_leaves=8)
NAMES = ["_id", "a", "b", "history", "lastTraceback", "lease", "status"]
DOCS = st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=7)
FLAGS = st.sampled_from([0, 1, True, False, 0.0, 1.0, -0.0])
PROJECTIONS = st.dictionaries(st.sampled_from([*NAMES, "missing"]), FLAGS, min_size=1,
                              max_size=4)


def project_both(doc: Doc, spec: Doc) -> tuple[Any, Any]:
    """The fast path's and the general path's outcome of one projection."""
    fast = outcome(lambda: projection.project(doc, dict(spec), VARIABLES))
    with general_projection():
        general = outcome(lambda: projection.project(doc, dict(spec), VARIABLES))
    return fast, general


def test_generated_projections_match_the_general_path() -> None:
    simple: list[bool] = []

    @SETTINGS
    @given(doc=DOCS, spec=PROJECTIONS)
    def check(doc: Doc, spec: Doc) -> None:
        fast, general = project_both(doc, spec)
        assert fast == general
        simple.append(projection._simple_shape(spec) is not None)

    check()
    assert sum(simple) > 100  # most took the fast path


DOC: Doc = {"a": 1, "_id": 7, "history": [{"at": NOW}], "lease": {"owner": "w", "n": Int64(2)},
            "lastTraceback": None, "b": [1, {"x": 2}], "status": "processing"}


@pytest.mark.parametrize("spec", [
    CLAIMED_FIELDS, {"history": 0}, {"history": False, "lease": 0.0}, {"_id": 0},
    {"_id": 1}, {"_id": True}, {"_id": 0, "history": 0}, {"_id": 1, "history": 0},
    {"a": 1}, {"a": True, "lease": 1.0}, {"status": 1, "_id": 0}, {"missing": 1},
    {"missing": 0}, {"b": 1, "a": 1, "_id": 1}, {"_id": False, "status": True},
])
def test_projection_shapes(spec: Doc) -> None:
    assert projection._simple_shape(spec) is not None
    fast, general = project_both(DOC, spec)
    assert fast == general


@pytest.mark.parametrize("spec", [
    {"a": 1, "b": 0}, {"a": 0, "b": True}, {"a": 2}, {"a": -1}, {"a": Int64(1)},
    {"a.x": 1}, {"a": "$b"}, {"b": {"$slice": 1}}, {"b.$": 1}, {"a": None}, {"": 1},
    {"a": 1, "$b": 1}, {"_id": 0, "a": 1, "b": 0}, {"_id": 2, "a": 0},
])
def test_other_projections_take_the_general_path(spec: Doc) -> None:
    assert projection._simple_shape(spec) is None
    fast, general = project_both(DOC, spec)
    assert fast == general


def test_mixed_projection_keeps_its_error() -> None:
    fast, general = project_both(DOC, {"a": 1, "history": 0})
    assert fast == general and fast[0] == "error"


def test_projection_result_is_a_new_document() -> None:
    doc = {"_id": 1, "a": 1, "history": []}
    for spec in ({"history": 0}, {"a": 1}, {"_id": 0}, {"_id": 1}):
        result = projection.project(doc, spec, VARIABLES)
        assert result is not doc
        result["added"] = True
    assert doc == {"_id": 1, "a": 1, "history": []}


def test_id_goes_first_whatever_its_place() -> None:
    doc = {"a": 1, "_id": 2, "b": 3}
    assert list(projection.project(doc, {"b": 0}, VARIABLES)) == ["_id", "a"]
    assert list(projection.project(doc, {"b": 1, "a": 1}, VARIABLES)) == ["_id", "a", "b"]
    assert list(projection.project(doc, {"b": 1, "_id": 0}, VARIABLES)) == ["b"]


# -- update pipelines --------------------------------------------------------------------------

def update_both(doc: Doc, pipeline: list[Any]) -> tuple[Any, Any, bool]:
    """The fast path's and the general engine's outcome of one pipeline update, and whether
    the fast path answered by itself (without falling back)."""
    answered = True
    try:
        compiled_stages.compile_pipeline_update(pipeline)(doc, VARIABLES)
    except Unsupported:
        answered = False
    except Exception:  # an error of the statement: compared below
        pass
    fast = outcome(lambda: updates.apply_update(doc, pipeline, {}, None, False, VARIABLES))
    with general_pipelines():
        general = outcome(lambda: updates.apply_update(doc, pipeline, {}, None, False,
                                                       VARIABLES))
    return fast, general, answered


FIELDS = ["a", "b", "n", "status", "history", "lease"]
# The general engine parts from MongoDB on missing operands (``$slice`` and comparisons of
# missing values): the generated documents have every field the expressions read.
REFS = st.sampled_from([*(f"${name}" for name in FIELDS), "$lease.owner", "$lease.n",
                        "$$NOW", "$$ROOT.a", "$$CURRENT.n"])
CONSTANTS = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, -1, 2**31 - 1, 30_000, -3, 2**53]),
    st.sampled_from([1.5, -0.0, 0.0]), st.sampled_from(["pending", "", "x"]),
    st.just(NOW), st.just(Int64(4)), st.just(ObjectId("665a00000000000000000001")))


def _operators(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    pairs = st.lists(inner, min_size=2, max_size=2)
    return st.one_of(
        st.builds(lambda a: {"$cond": a}, st.lists(inner, min_size=3, max_size=3)),
        st.builds(lambda a, b, c: {"$cond": {"if": a, "then": b, "else": c}},
                  inner, inner, inner),
        st.builds(lambda a: {"$ifNull": a}, st.lists(inner, min_size=2, max_size=3)),
        *(st.builds(lambda a, op=op: {op: a}, pairs)
          for op in ("$eq", "$ne", "$add")),
        st.builds(lambda a, b: {"$in": [a, b]}, inner, st.lists(inner, max_size=3)),
        st.builds(lambda a: {"$and": a}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a: {"$or": a}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a: {"$not": [a]}, inner),
        st.builds(lambda a: {"$type": a}, inner),
        st.builds(lambda a: {"$max": a}, st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda a: {"$min": a}, st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda a, n: {"$slice": [a, n]}, inner, st.sampled_from([-2, 0, 1, 5])),
        st.builds(lambda a, p, n: {"$slice": [a, p, n]}, inner,
                  st.sampled_from([-1, 0, 2]), st.sampled_from([1, 3])),
        st.builds(lambda a: {"$concatArrays": a}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a: {"$literal": a}, st.one_of(CONSTANTS, REFS)),
        st.builds(lambda a, b: {"k": a, "m": b}, inner, inner),
        st.lists(inner, max_size=2),
    )


EXPRESSIONS = st.recursive(st.one_of(REFS, CONSTANTS), _operators, max_leaves=6)
PATHS = ["a", "b", "n", "status", "history", "lease.owner", "lease.n", "deep.x.y"]
TASK_VALUES = st.one_of(SCALARS, st.lists(st.integers(0, 9), max_size=4))
TASK_DOCS = st.fixed_dictionaries({
    "_id": st.just(1), **{name: TASK_VALUES for name in FIELDS if name != "lease"},
    "lease": st.fixed_dictionaries({"owner": st.text(max_size=2), "n": st.integers(0, 3)})})
REMOVALS = st.just("$$REMOVE")  # a whole field's value only, where the engines agree


def _no_prefixes(fields: Doc) -> bool:
    names = [path.split(".") for path in fields]
    return not any(a != b and b[:len(a)] == a for a in names for b in names)


SET_STAGES = st.builds(
    lambda fields, name: {name: fields},
    st.dictionaries(st.sampled_from(PATHS), st.one_of(EXPRESSIONS, REMOVALS), min_size=1,
                    max_size=4)
    .filter(_no_prefixes), st.sampled_from(["$set", "$addFields"]))
UNSET_STAGES = st.builds(lambda names: {"$unset": names},
                         st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3,
                                  unique=True))
PIPELINES = st.lists(st.one_of(SET_STAGES, SET_STAGES, UNSET_STAGES), min_size=1, max_size=3)


def test_generated_pipelines_match_the_general_engine() -> None:
    answered: list[bool] = []

    @SETTINGS
    @given(doc=TASK_DOCS, pipeline=PIPELINES)
    def check(doc: Doc, pipeline: list[Any]) -> None:
        fast, general, by_itself = update_both(doc, pipeline)
        assert fast == general
        answered.append(by_itself)

    check()
    assert sum(answered) > 100  # most took the fast path


STORE = TaskStore(None, 30_000, "worker-1")  # type: ignore[arg-type]  # builders only
CLAIM = ObjectId("665a000000000000000000aa")
TASKS: list[Doc] = [
    {"_id": 1, "status": "pending", "attempts": 0, "nextRunAt": NOW, "dueAt": NOW},
    {"_id": 2, "status": "processing", "attempts": 3, "nextRunAt": NOW, "dueAt": NOW,
     "lease": {"owner": "worker-1", "claim": CLAIM, "expiresAt": NOW},
     "history": [{"at": NOW, "status": "failed", "attempt": i} for i in range(12)],
     "firstErrorAt": NOW, "slot": 2, "keySlot": 1},
    {"_id": 3, "status": "processing_dirty", "attempts": Int64(2), "nextRunAt": None,
     "lease": {"owner": "worker-2", "claim": CLAIM}, "history": None, "snapshotHash": "h"},
    {"_id": 4, "status": "completed", "expiresAt": NOW, "snapshotHash": "h", "snapshot": {}},
    {"_id": 5, "attempts": 2**31 - 1, "lease": None},
]


def _runtime_pipelines() -> list[list[Any]]:
    held = Claimed({"_id": 2, "lease": {"claim": CLAIM}}, CLAIM)
    pipelines = [STORE._claim_pipeline(CLAIM), STORE._claim_pipeline(CLAIM, {"slot": 1})]
    for outcome_name, retry_in_ms in (("completed", None), ("failed", 500), ("failed", None),
                                      ("skipped", None)):
        for reset in (True, False):
            pipelines.append(STORE.finalize_update(
                held, outcome_name, error="boom" if outcome_name == "failed" else None,
                traceback="tb", history_limit=10, duration_ms=1.25, debounce="$$NOW",
                reset_on_data_change=reset, retry_in_ms=retry_in_ms)[1])
    pipelines.append(STORE.finalize_update(held, "completed", error=None, history_limit=0,
                                           duration_ms=1.0, debounce={"$add": ["$$NOW", 5]})[1])
    reactor = ReactorSpec(name="noop", collection="items", database=None, model=BaseModel,
                          watched_model=BaseModel, filter={}, watch=None, pipeline=[],
                          policies=Policies(), handler="h", trigger_fingerprint="", source="")
    for snapshot in ({"n": 1}, {}):
        update = plan_update(reactor, ObjectId("665a000000000000000000bb"), snapshot,
                             3, {"priority": 2})
        pipelines.append(cast(list[Doc], update._doc))
    return pipelines


@pytest.mark.parametrize("doc", TASKS, ids=[str(d["_id"]) for d in TASKS])
def test_runtime_pipelines_match_the_general_engine(doc: Doc) -> None:
    for pipeline in _runtime_pipelines():
        fast, general, answered = update_both(doc, pipeline)
        assert fast == general, pipeline
        assert answered and fast[0] == "ok", pipeline


@pytest.mark.parametrize("expression", [
    {"$add": ["$status", 1]}, {"$add": ["$$NOW", "$$NOW"]}, {"$add": ["$attempts", 1.5]},
    {"$add": [2**31 - 1, 1]}, {"$add": ["$$NOW", 2**62]}, {"$subtract": ["$status", 1]},
    {"$slice": ["$history", "x"]}, {"$slice": ["$history", 1, 0]},
    {"$slice": ["$history", None, 1]}, {"$concatArrays": ["$history", "$status"]},
    {"$cond": [True, 1]}, {"$eq": [1]}, {"$nope": 1}, {"$$NOW": 1},
])
def test_bad_expressions_keep_their_outcome(expression: Any) -> None:
    doc = {"_id": 1, "status": "s", "attempts": 1, "history": [1, 2, 3]}
    fast, general, _ = update_both(doc, [{"$set": {"x": expression, "y": None}}])
    assert fast == general


@pytest.mark.parametrize("pipeline", [
    [{"$set": {"a": None, "b": 1, "c": "text", "d": {"$literal": "$notAPath"},
               "e": "$$REMOVE", "f": NOW, "g": 1.5, "h": {"$literal": [1, "$x"]}}}],
    [{"$set": {"status": "$$REMOVE", "lease.owner": "$$REMOVE", "deep.x": "$$REMOVE"}}],
    [{"$set": {"lease.owner": "me", "deep.x.y": 1}}, {"$unset": "attempts"}],
    [{"$addFields": {"a": "$status"}}, {"$set": {"b": "$a"}}, {"$unset": ["a"]}],
    [],
])
def test_constant_fields_and_stage_order(pipeline: list[Any]) -> None:
    doc = {"_id": 1, "status": "s", "attempts": 1, "lease": {"owner": "w", "n": 1}}
    fast, general, answered = update_both(doc, pipeline)
    assert fast == general and answered


@pytest.mark.parametrize("expression", [
    {"$slice": ["$history", 2]}, {"$slice": ["$history", -2]}, {"$slice": ["$history", 0]},
    {"$slice": ["$history", 1, 2]}, {"$slice": ["$history", -2, 1]},
    {"$slice": ["$history", 5, 1]},
    {"$slice": [{"$concatArrays": ["$history", [9]]}, 2, 9]},
])
def test_slices(expression: Any) -> None:
    doc = {"_id": 1, "history": [1, 2, 3, 4]}
    fast, general, answered = update_both(doc, [{"$set": {"x": expression}}])
    assert fast == general and answered


OID = ObjectId("665a000000000000000000cc")


@pytest.mark.parametrize(("doc", "pipeline", "expected"), [
    ({"a": 1, "_id": 2}, [{"$set": {"b": 1}}], ["_id", "a", "b"]),  # _id goes first
    ({"_id": 1, "a": 1}, [{"$set": {"_id": 5}}], 66),  # ImmutableField
    ({"_id": 1, "a": 1}, [{"$unset": "_id"}], 66),
    ({"_id": OID, "a": 1}, [{"$set": {"a": 2}}], ["_id", "a"]),
    ({"_id": OID}, [{"$set": {"_id": ObjectId("665a000000000000000000dd")}}], 66),
    ({"_id": OID}, [{"$set": {"_id": {"$literal": OID}}}], ["_id"]),
    ({"_id": float("nan"), "a": 1}, [{"$set": {"a": 2}}], 66),  # NaN is not itself
    ({"a": 1}, [{"$set": {"b": "$a"}}], ["a", "b"]),
])
def test_id_checks(doc: Doc, pipeline: list[Any], expected: Any) -> None:
    fast, general, answered = update_both(doc, pipeline)
    assert fast == general and answered
    if isinstance(expected, int):
        assert fast[0] == "error" and fast[2] == expected
    else:
        assert fast[0] == "ok" and [key for key, _ in fast[1][2]] == expected


def test_fast_path_leaves_the_document_alone() -> None:
    doc = {"_id": 1, "lease": {"owner": "w"}, "n": [1]}
    new = updates.apply_update(doc, [{"$set": {"lease.owner": "x", "n": {"$concatArrays": [
        "$n", [2]]}}}], {}, None, False, VARIABLES)
    assert doc == {"_id": 1, "lease": {"owner": "w"}, "n": [1]}
    assert new == {"_id": 1, "lease": {"owner": "x"}, "n": [1, 2]}
