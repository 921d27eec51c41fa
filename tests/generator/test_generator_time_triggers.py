"""Time-driven triggers: comparisons of a field with ``$$NOW`` become ``TimeTrigger``s in the
generated ``ReactorSpec``, with an ascending index on the field in ``INDEXES`` and the setup
scripts. (Refused uses of the clock are error cases in test_generator_errors.py; the generated
code is linted and type-checked with the other corpus cases in test_generator_typing.py.)"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from generator_support import CORPUS, reactgen, write_files

from generator.time_triggers import find_time_triggers, index_name
from runtime.reactor import TimeTrigger

HOUR = 3_600_000
DAY = 86_400_000


def trigger(path: str, offset_ms: int = 0) -> TimeTrigger:
    return TimeTrigger(path, offset_ms, index_name(path))


SUPPORTED: list[tuple[str, Any, tuple[TimeTrigger, ...]]] = [
    # the comparison operators, either side first (a falling edge counts too)
    ("lte", {"$lte": ["$dueAt", "$$NOW"]}, (trigger("dueAt"),)),
    ("lt", {"$lt": ["$dueAt", "$$NOW"]}, (trigger("dueAt"),)),
    ("gte-mirrored", {"$gte": ["$$NOW", "$dueAt"]}, (trigger("dueAt"),)),
    ("gt-falling-edge", {"$gt": ["$dueAt", "$$NOW"]}, (trigger("dueAt"),)),
    ("eq", {"$eq": ["$dueAt", "$$NOW"]}, (trigger("dueAt"),)),
    ("ne", {"$ne": ["$$NOW", "$dueAt"]}, (trigger("dueAt"),)),
    ("cmp", {"$cmp": ["$dueAt", "$$NOW"]}, (trigger("dueAt"),)),
    ("dotted-path", {"$lt": ["$sla.breachAt", "$$NOW"]}, (trigger("sla.breachAt"),)),
    ("current-prefix", {"$lt": ["$$CURRENT.dueAt", "$$NOW"]}, (trigger("dueAt"),)),
    # constant shifts with $add / $subtract
    ("field-plus", {"$lte": [{"$add": ["$dueAt", HOUR]}, "$$NOW"]}, (trigger("dueAt", HOUR),)),
    ("field-plus-reordered", {"$lte": [{"$add": [HOUR, "$dueAt"]}, "$$NOW"]},
     (trigger("dueAt", HOUR),)),
    ("field-minus", {"$lte": [{"$subtract": ["$dueAt", HOUR]}, "$$NOW"]},
     (trigger("dueAt", -HOUR),)),
    ("now-minus", {"$lte": ["$dueAt", {"$subtract": ["$$NOW", HOUR]}]},
     (trigger("dueAt", HOUR),)),
    ("now-plus", {"$lte": ["$dueAt", {"$add": ["$$NOW", 60_000]}]}, (trigger("dueAt", -60_000),)),
    ("both-shifted", {"$lt": [{"$add": ["$dueAt", 5_000, 5_000]},
                              {"$subtract": ["$$NOW", 1_000]}]}, (trigger("dueAt", 11_000),)),
    ("number-long", {"$lt": [{"$add": ["$dueAt", {"$numberLong": "7200000"}]}, "$$NOW"]},
     (trigger("dueAt", 2 * HOUR),)),
    ("literal-and-float", {"$lt": [{"$add": ["$dueAt", {"$literal": 10}, 2.0]}, "$$NOW"]},
     (trigger("dueAt", 12),)),
    # $dateAdd / $dateSubtract with fixed-length units, on either side
    ("date-subtract-now", {"$lt": ["$remindAt", {"$dateSubtract": {
        "startDate": "$$NOW", "unit": "hour", "amount": 2}}]}, (trigger("remindAt", 2 * HOUR),)),
    ("date-add-now", {"$lt": ["$remindAt", {"$dateAdd": {
        "startDate": "$$NOW", "unit": "minute", "amount": 30}}]},
     (trigger("remindAt", -30 * 60_000),)),
    ("date-add-field", {"$lte": [{"$dateAdd": {
        "startDate": "$dueAt", "unit": "day", "amount": 3}}, "$$NOW"]},
     (trigger("dueAt", 3 * DAY),)),
    ("date-subtract-field", {"$lte": [{"$dateSubtract": {
        "startDate": "$dueAt", "unit": "week", "amount": 1}}, "$$NOW"]},
     (trigger("dueAt", -7 * DAY),)),
    ("date-add-ms-and-seconds", {"$lte": [{"$dateAdd": {
        "startDate": {"$dateAdd": {"startDate": "$dueAt", "unit": "second", "amount": 2}},
        "unit": "millisecond", "amount": 5}}, "$$NOW"]}, (trigger("dueAt", 2_005),)),
    ("date-add-negative", {"$lte": ["$dueAt", {"$dateAdd": {
        "startDate": "$$NOW", "unit": "hour", "amount": -1}}]}, (trigger("dueAt", HOUR),)),
    # elapsed time (now - field) compared with a constant, and the mirrored forms
    ("elapsed", {"$gte": [{"$subtract": ["$$NOW", "$createdAt"]}, DAY]},
     (trigger("createdAt", DAY),)),
    ("elapsed-mirrored", {"$lte": [DAY, {"$subtract": ["$$NOW", "$createdAt"]}]},
     (trigger("createdAt", DAY),)),
    ("elapsed-negated", {"$lte": [{"$subtract": ["$createdAt", "$$NOW"]}, -DAY]},
     (trigger("createdAt", DAY),)),
    ("elapsed-shifted", {"$gte": [{"$add": [{"$subtract": ["$$NOW", "$createdAt"]}, HOUR]}, DAY]},
     (trigger("createdAt", DAY - HOUR),)),
    ("constant-minus-elapsed", {"$lte": [{"$subtract": [DAY, {"$subtract": [
        "$$NOW", "$createdAt"]}]}, 0]}, (trigger("createdAt", DAY),)),
    # boolean structure of an expression filter
    ("and-or-not", {"$and": [
        {"$ne": ["$status", "closed"]},
        {"$or": [{"$lte": ["$dueAt", "$$NOW"]},
                 {"$not": [{"$gt": [{"$add": ["$sla.breachAt", HOUR]}, "$$NOW"]}]}]},
    ]}, (trigger("dueAt"), trigger("sla.breachAt", HOUR))),
    ("not-without-list", {"$not": {"$lt": ["$dueAt", "$$NOW"]}}, (trigger("dueAt"),)),
    ("comparison-of-comparison", {"$eq": [{"$lt": ["$dueAt", "$$NOW"]}, True]},
     (trigger("dueAt"),)),
    ("deduplicated-and-sorted", {"$or": [
        {"$lt": ["$b", "$$NOW"]}, {"$lt": ["$a", {"$subtract": ["$$NOW", 5]}]},
        {"$gt": ["$$NOW", "$b"]}, {"$lt": ["$a", "$$NOW"]}]},
     (trigger("a"), trigger("a", 5), trigger("b"))),
    # queries: $expr at the top or inside $and / $or / $nor
    ("query-expr", {"status": "open", "$expr": {"$lt": ["$remindAt", {"$dateSubtract": {
        "startDate": "$$NOW", "unit": "hour", "amount": 2}}]}}, (trigger("remindAt", 2 * HOUR),)),
    ("query-and-or-nor", {"$and": [
        {"status": "open"},
        {"$or": [{"$expr": {"$lte": ["$dueAt", "$$NOW"]}}, {"priority": 1}]},
        {"$nor": [{"$expr": {"$gte": [{"$subtract": ["$$NOW", "$createdAt"]}, DAY]}}]},
    ]}, (trigger("createdAt", DAY), trigger("dueAt"))),
    ("query-comment-mentions-now", {"$comment": "$$NOW", "$expr": {"$lt": ["$dueAt", "$$NOW"]}},
     (trigger("dueAt"),)),
    # no clock: no trigger
    ("no-clock-query", {"status": "paid", "total": {"$gte": 100}}, ()),
    ("no-clock-expression", {"$gt": [{"$add": ["$a", "$b"]}, 100]}, ()),
    ("literal-now-string", {"$eq": ["$note", {"$literal": "$$NOW"}]}, ()),
]


@pytest.mark.parametrize(("spec", "expected"), [(s, e) for _, s, e in SUPPORTED],
                         ids=[i for i, _, _ in SUPPORTED])
def test_supported_form_gives_exact_time_triggers(spec: Any,
                                                  expected: tuple[TimeTrigger, ...]) -> None:
    assert find_time_triggers(spec, "/trigger/filter") == expected


@pytest.mark.parametrize("path", [
    "dueAt", "due_at", "sla.breachAt", "a.b", "a_b", "Fälligkeit", "with space", "a-b", "$x",
    "x" * 300, "x" * 300 + "y", "", "..",
])
def test_index_names_are_safe_and_distinct(path: str) -> None:
    name = index_name(path)
    assert re.fullmatch(r"reactgen_time_[A-Za-z0-9_]+", name), name
    assert len(name) <= len("reactgen_time_") + 64 + 9
    assert index_name(path) == name, "deterministic"


def test_index_names_keep_plain_paths_readable_and_never_collide() -> None:
    assert index_name("dueAt") == "reactgen_time_dueAt"
    assert index_name("due_at") == "reactgen_time_due_at"
    assert index_name("_id") == "_id_"
    paths = ["a.b", "a_b", "a-b", "a b", "a.b_", "x" * 300, "x" * 300 + "y", "sla.breachAt"]
    assert len({index_name(p) for p in paths}) == len(paths)
    assert index_name("sla.breachAt").startswith("reactgen_time_sla_breachAt_")


# --- the generated package ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """The ``time_triggers`` corpus case built as package ``app_time`` (importable)."""
    project = tmp_path_factory.mktemp("time-triggers")
    shutil.copytree(CORPUS / "time_triggers", project / "schemas")
    result = reactgen(project, "build", "schemas", "--out", "app_time")
    assert result.code == 0, result.text
    return project


@pytest.fixture
def registry(built: Path) -> Iterator[Any]:
    """``app_time.registry``, imported from the built package."""
    sys.path.insert(0, str(built))
    try:
        yield importlib.import_module("app_time.registry")
    finally:
        sys.path.remove(str(built))
        for name in [m for m in sys.modules if m == "app_time" or m.startswith("app_time.")]:
            del sys.modules[name]


ODD_PATH = "follow-up.nächster Kontakt.geplant für den Kundendienst der Abteilung Süd-West"
EXPECTED = {
    "archive_stale": (trigger("createdAt", DAY),),
    "follow_up_odd_path": (trigger(ODD_PATH, 1),),
    "escalate_overdue": (trigger("dueAt"), trigger("sla.breachAt", HOUR)),
    "remind_open_tickets": (trigger("remindAt", 2 * HOUR),),
    "upcoming_tickets": (trigger("dueAt"),),
}
TIME_INDEXES = {
    ("createdAt", "reactgen_time_createdAt"),
    ("dueAt", "reactgen_time_dueAt"),
    ("sla.breachAt", index_name("sla.breachAt")),
    ("remindAt", "reactgen_time_remindAt"),
    (ODD_PATH, index_name(ODD_PATH)),
}


def source_indexes(indexes: list[tuple[str | None, str, list[tuple[str, int]],
                                       dict[str, Any]]]) -> list[tuple[str, str]]:
    """(key path, name) of every single-field index on the source collection ``tickets``
    except the filter indexes."""
    return [(keys[0][0], options["name"]) for _, collection, keys, options in indexes
            if collection == "tickets" and len(keys) == 1
            and not options["name"].startswith("reactgen_filter_")]


def test_reactor_specs_carry_the_time_triggers(registry: Any) -> None:
    specs = {spec.name: spec for spec in registry.REACTORS}
    assert {name: spec.time_triggers for name, spec in specs.items()} == EXPECTED


def test_each_time_path_is_indexed_once_under_the_triggers_index_name(registry: Any) -> None:
    indexes = source_indexes(registry.INDEXES)
    assert set(indexes) == TIME_INDEXES
    assert len(indexes) == len(TIME_INDEXES), f"duplicated: {indexes}"
    names = [options["name"] for _, _, _, options in registry.INDEXES]
    # upcoming_tickets' filter index would also be {dueAt: 1}: one index per key pattern,
    # named as the time triggers say.
    assert "reactgen_filter_upcoming_tickets" not in names
    assert "reactgen_filter_remind_open_tickets" in names
    for spec in registry.REACTORS:
        for time_trigger in spec.time_triggers:
            assert (time_trigger.path, time_trigger.index) in indexes


def test_setup_scripts_create_the_time_indexes_once(built: Path, registry: Any) -> None:
    script = (built / "app_time" / "indexes" / "setup_indexes.py").read_text()
    tree = ast.parse(script)
    assigned = next(node.value for node in tree.body if isinstance(node, ast.AnnAssign)
                    and isinstance(node.target, ast.Name) and node.target.id == "INDEXES")
    python_indexes = ast.literal_eval(assigned)
    assert python_indexes == [tuple(index) for index in registry.INDEXES]
    mongosh = (built / "app_time" / "indexes" / "setup_indexes.mongosh.js").read_text()
    literal = mongosh.split("const indexes = ", 1)[1].split(";\n", 1)[0]
    js_indexes = [(i["collection"], list(i["keys"].items()), i["options"])
                  for i in json.loads(literal)]
    assert js_indexes == [(c, k, o) for _, c, k, o in registry.INDEXES]
    times = [(keys[0][0], options["name"]) for _, keys, options in js_indexes
             if options["name"].startswith("reactgen_time_")]
    assert sorted(times) == sorted(TIME_INDEXES)


def test_manifest_records_the_time_triggers(built: Path) -> None:
    manifest = json.loads((built / "app_time" / "manifest.json").read_text())
    assert manifest["reactors"]["escalate_overdue"]["timeTriggers"] == [
        {"path": "dueAt", "offsetMs": 0, "index": "reactgen_time_dueAt"},
        {"path": "sla.breachAt", "offsetMs": HOUR, "index": index_name("sla.breachAt")},
    ]


def test_reactor_without_clock_imports_no_time_trigger(tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/x.reactor.yaml": (
        "collection: orders\nschema: {type: object}\ntrigger:\n  filter: {status: paid}\n")})
    assert reactgen(tmp_path, "build", "schemas", "--out", "app").code == 0
    module = (tmp_path / "app" / "reactors" / "x.py").read_text()
    assert "TimeTrigger" not in module and "time_triggers" not in module
    manifest = json.loads((tmp_path / "app" / "manifest.json").read_text())
    assert "timeTriggers" not in manifest["reactors"]["x"]
    assert "reactgen_time_" not in (tmp_path / "app" / "registry.py").read_text()


def test_indexes_follow_a_changed_time_path(tmp_path: Path) -> None:
    """Rebuilding after the compared field changes moves the index with it."""
    definition = ("collection: tasks\nschema: {type: object}\ntrigger:\n"
                  "  filter: {$lt: ['$dueAt', '$$NOW']}\n")
    write_files(tmp_path, {"schemas/due.reactor.yaml": definition})
    assert reactgen(tmp_path, "build", "schemas", "--out", "app").code == 0
    registry = (tmp_path / "app" / "registry.py").read_text()
    assert "'reactgen_time_dueAt'" in registry
    write_files(tmp_path, {"schemas/due.reactor.yaml": definition.replace("dueAt", "deadline")})
    assert reactgen(tmp_path, "check", "schemas", "--out", "app").code == 3
    assert reactgen(tmp_path, "build", "schemas", "--out", "app").code == 0
    registry = (tmp_path / "app" / "registry.py").read_text()
    assert "'reactgen_time_deadline'" in registry and "reactgen_time_dueAt" not in registry
