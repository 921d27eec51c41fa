"""Flow-control policies: ``concurrency`` (per instance, cluster-wide, per key), ``rateLimit``
and ``priority`` become the runtime's dataclasses in the generated ``ReactorSpec``, with the
task-collection indexes they need; mistakes are build errors naming file, line, pointer and a
fix. (The generated code is linted and type-checked with the other corpus cases in
test_generator_typing.py; its exact text is the ``flow_control`` golden.)"""

from __future__ import annotations

import ast
import contextlib
import datetime
import importlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from generator_support import CORPUS, CliResult, reactgen, snapshot, write_files

from generator.schemas import undeclared_path
from runtime.reactor import KeyConcurrency, PriorityPolicy, RateLimit

# --- the generated package ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """The ``flow_control`` corpus case built as package ``app_flow`` (importable)."""
    project = tmp_path_factory.mktemp("flow-control")
    shutil.copytree(CORPUS / "flow_control", project / "schemas")
    result = reactgen(project, "build", "schemas", "--out", "app_flow")
    assert result.code == 0, result.text
    return project


@contextlib.contextmanager
def _import(project: Path, module: str) -> Iterator[Any]:
    """``module`` imported from the package built in ``project`` (forgotten afterwards)."""
    package = module.split(".", 1)[0]
    sys.path.insert(0, str(project))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(project))
        for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[name]


@pytest.fixture
def registry(built: Path) -> Iterator[Any]:
    """``app_flow.registry``, imported from the built package."""
    with _import(built, "app_flow.registry") as module:
        yield module


def test_specs_carry_the_flow_control_policies(registry: Any) -> None:
    policies = {spec.name: spec.policies for spec in registry.REACTORS}
    per_customer = policies["per_customer"]
    assert per_customer.concurrency == 2
    assert per_customer.cluster_concurrency is None
    assert per_customer.key_concurrency == KeyConcurrency(expression="$customerId", max=1)
    assert per_customer.rate_limit == RateLimit(max=100, per_ms=1000)
    assert per_customer.priority == PriorityPolicy(
        static=5, expression={"$cond": [{"$gt": ["$total", 1000]}, 100, 0]})

    cluster_wide = policies["cluster_wide"]
    assert (cluster_wide.concurrency, cluster_wide.cluster_concurrency) == (None, 10)
    assert cluster_wide.key_concurrency is None and cluster_wide.rate_limit is None
    assert cluster_wide.priority == PriorityPolicy(static=-3)

    compound = policies["compound_key"]
    assert compound.key_concurrency == KeyConcurrency(
        expression={"$concat": ["$region", "-", {"$ifNull": ["$customer.tier", "none"]}]}, max=3)
    assert compound.rate_limit == RateLimit(max=5, per_ms=90_000)
    cutoff = datetime.datetime(2024, 1, 1)  # json_util decodes dates as naive UTC
    assert compound.priority == PriorityPolicy(
        static=0, expression={"$cond": [{"$lt": ["$createdAt", cutoff]}, 10, 0]})

    deep = policies["deep_priority"]
    assert deep.concurrency == 1 and deep.key_concurrency is None
    assert deep.priority.static == 0
    assert deep.priority.expression["$switch"]["default"] == 0


FLOW_INDEXES = [
    ([("reactor", 1), ("priority", -1), ("nextRunAt", 1)], {"name": "reactgen_priority_claim"}),
    ([("slot", 1)], {"name": "reactgen_slot", "unique": True,
                     "partialFilterExpression": {"slot": {"$exists": True}}}),
    ([("keySlot", 1)], {"name": "reactgen_key_slot", "unique": True,
                        "partialFilterExpression": {"keySlot": {"$exists": True}}}),
]


def test_flow_control_indexes_are_generated_once_per_tasks_collection(registry: Any) -> None:
    on_tasks = [(keys, options) for _, collection, keys, options in registry.INDEXES
                if collection == "orders_tasks"]
    for expected in FLOW_INDEXES:
        assert on_tasks.count(expected) == 1, (expected, on_tasks)


def test_setup_scripts_create_the_flow_control_indexes(built: Path, registry: Any) -> None:
    script = (built / "app_flow" / "indexes" / "setup_indexes.py").read_text()
    tree = ast.parse(script)
    assigned = next(node.value for node in tree.body if isinstance(node, ast.AnnAssign)
                    and isinstance(node.target, ast.Name) and node.target.id == "INDEXES")
    assert ast.literal_eval(assigned) == [tuple(index) for index in registry.INDEXES]
    mongosh = (built / "app_flow" / "indexes" / "setup_indexes.mongosh.js").read_text()
    literal = mongosh.split("const indexes = ", 1)[1].split(";\n", 1)[0]
    js_indexes = [(list(i["keys"].items()), i["options"]) for i in json.loads(literal)
                  if i["collection"] == "orders_tasks"]
    for expected in FLOW_INDEXES:
        assert expected in js_indexes


def _build(project: Path, policies: str, package: str = "app") -> CliResult:
    write_files(project, {"schemas/x.reactor.yaml": (
        "collection: orders\nschema: {type: object, properties: {customerId: {type: string}, "
        "total: {type: number}}}\ntrigger:\n  filter: {total: {$gt: 5}}\n" + policies)})
    return reactgen(project, "build", "schemas", "--out", package)


def _index_names(project: Path) -> set[str]:
    registry = (project / "app" / "registry.py").read_text()
    return {name for name in ("reactgen_priority_claim", "reactgen_slot", "reactgen_key_slot")
            if f"'{name}'" in registry}


@pytest.mark.parametrize(("policies", "expected"), [
    ("", set()),
    ("policies:\n  priority: 0\n", set()),
    ("policies:\n  priority: {static: 0}\n", set()),
    ("policies:\n  priority: -1\n", {"reactgen_priority_claim"}),
    ("policies:\n  priority: {expression: $total}\n", {"reactgen_priority_claim"}),
    ("policies:\n  concurrency: 3\n", set()),
    ("policies:\n  concurrency: {perInstance: 3}\n", set()),
    ("policies:\n  concurrency: {max: 3}\n", {"reactgen_slot"}),
    ("policies:\n  concurrency: {key: $customerId}\n", {"reactgen_key_slot"}),
    ("policies:\n  rateLimit: {max: 3, per: 1s}\n", set()),
])
def test_indexes_only_for_the_policies_that_need_them(tmp_path: Path, policies: str,
                                                      expected: set[str]) -> None:
    result = _build(tmp_path, policies)
    assert result.code == 0, result.text
    assert _index_names(tmp_path) == expected


def test_flow_control_does_not_change_the_trigger_fingerprint(tmp_path: Path) -> None:
    """Limits and priorities are policies: changing them must not re-scan the collection."""
    assert _build(tmp_path, "").code == 0
    manifest = json.loads((tmp_path / "app" / "manifest.json").read_text())
    before = manifest["reactors"]["x"]["triggerFingerprint"]
    result = _build(tmp_path, (
        "policies:\n  concurrency: {perInstance: 2, key: {$toLower: $customerId}, max: 2}\n"
        "  rateLimit: {max: 10, per: 500ms}\n  priority: {static: 7, expression: $total}\n"))
    assert result.code == 0, result.text
    manifest = json.loads((tmp_path / "app" / "manifest.json").read_text())
    assert manifest["reactors"]["x"]["triggerFingerprint"] == before
    module = (tmp_path / "app" / "reactors" / "x.py").read_text()
    assert f"trigger_fingerprint='{before}'" in module


def test_reactor_without_flow_control_imports_only_the_priority_default(tmp_path: Path) -> None:
    assert _build(tmp_path, "policies:\n  concurrency: 4\n").code == 0
    module = (tmp_path / "app" / "reactors" / "x.py").read_text()
    assert "KeyConcurrency" not in module and "RateLimit" not in module
    assert "CONCURRENCY_KEY" not in module and "PRIORITY_EXPRESSION" not in module
    assert "concurrency=4," in module and "cluster_concurrency=None," in module
    assert "priority=PriorityPolicy(\n            static=0,\n            expression=None," in module


HOSTILE = ["'); import os; os.system('echo owned') #", '"""', "\\", "\n", "ü\u2028",
           "{{ reactor.name }}", "${x}", "CONCURRENCY_KEY"]


def test_expressions_are_rendered_as_data_never_as_code(tmp_path: Path) -> None:
    """Whatever strings an expression holds, the generated module holds them as data."""
    key = {"$concat": ["$customerId", *HOSTILE]}
    priority = {"$cond": [{"$in": ["$customerId", HOSTILE]}, 10,
                          {"$let": {"vars": {"t": "$total"}, "in": {"$multiply": ["$$t", 2]}}}]}
    policies = {"concurrency": {"key": key, "max": 2}, "priority": {"expression": priority}}
    write_files(tmp_path, {"schemas/x.reactor.json": json.dumps({
        "collection": "orders", "schema": {"type": "object"}, "policies": policies})})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app_hostile")
    assert result.code == 0, result.text
    source = (tmp_path / "app_hostile" / "reactors" / "x.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and (
                node.target.id in ("CONCURRENCY_KEY", "PRIORITY_EXPRESSION")):
            _assert_data(node.value)
    with _import(tmp_path, "app_hostile.reactors.x") as spec:
        assert spec.REACTOR.policies.key_concurrency == KeyConcurrency(key, 2)
        assert spec.REACTOR.policies.priority == PriorityPolicy(0, priority)
        assert key == spec.CONCURRENCY_KEY


def _assert_data(node: ast.expr) -> None:
    """A Python literal, or ``json.loads`` / ``json_util.loads`` of one string literal."""
    if isinstance(node, ast.Call):
        assert ast.unparse(node.func) in ("json.loads", "json_util.loads"), ast.unparse(node)
        assert len(node.args) == 1 and not node.keywords
        ast.literal_eval(node.args[0])
        assert isinstance(ast.literal_eval(node.args[0]), str)
    else:
        ast.literal_eval(node)


# --- the document-path check -------------------------------------------------------------------


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customerId": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "items": {"type": "array", "items": {"type": "object",
                                             "properties": {"sku": {"type": "string"}}}},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "meta": {"type": "object"},
        "open": {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
        "patterned": {"type": "object", "properties": {"a": {}},
                      "patternProperties": {"^x-": {}}},
        "composed": {"allOf": [{"properties": {"a": {}}}]},
        "list": {"type": "array"},
    },
    "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.mark.parametrize("path", [
    "customerId", "_id", "address.city", "items.sku", "items.0.sku", "tags.anything",
    "meta.anything.below", "open.b", "patterned.x-y", "composed.b", "list.whatever",
])
def test_declared_or_open_paths_are_allowed(path: str) -> None:
    assert undeclared_path(SCHEMA, path) is None


@pytest.mark.parametrize(("path", "parent", "field", "suggestion"), [
    ("customerID", "", "customerID", "customerId"),
    ("adress.city", "", "adress", "address"),
    ("address.cty", "address", "cty", "address.city"),
    ("items.skus", "items", "skus", "items.sku"),
    ("patterned.b", "patterned", "b", None),
    ("customerId.name", "customerId", "name", None),
])
def test_paths_the_schema_rules_out(path: str, parent: str, field: str,
                                    suggestion: str | None) -> None:
    found = undeclared_path(SCHEMA, path)
    assert found is not None
    assert (found.parent, found.field, found.suggestion()) == (parent, field, suggestion)


def test_a_schema_without_properties_allows_every_path() -> None:
    assert undeclared_path({"type": "object"}, "anything.at.all") is None
    assert undeclared_path({}, "x") is None


# --- errors ------------------------------------------------------------------------------------


SCHEMA_FILE = json.dumps({
    "title": "Order", "type": "object",
    "properties": {"_id": {"type": "string"}, "customerId": {"type": "string"},
                   "status": {"type": "string"}, "total": {"type": "number"},
                   "customer": {"type": "object", "properties": {"tier": {"type": "string"}}}},
})


def policies(body: str) -> dict[str, str]:
    """A definition on ``orders`` whose ``policies:`` block is ``body`` (from line 5)."""
    return {"schemas/x.reactor.yaml": ("collection: orders\nschema:\n  $ref: order.schema.json\n"
                                       "policies:\n" + body)}


ERRORS: list[tuple[str, str, str, list[str]]] = [
    # (id, policies body, "file:line: /pointer:", expected texts)
    # --- concurrency: the integer or the object ------------------------------------------------
    ("concurrency-string", '  concurrency: "4"\n', "x.reactor.yaml:5: /policies/concurrency:",
     ["expected an integer or a mapping, not a string '4'",
      "fix: write concurrency: 4 (per instance), concurrency: {perInstance: 4, max: 10}"]),
    ("concurrency-list", "  concurrency: [2, 4]\n", "x.reactor.yaml:5: /policies/concurrency:",
     ["expected an integer or a mapping, not a list"]),
    ("concurrency-float", "  concurrency: 2.5\n", "x.reactor.yaml:5: /policies/concurrency:",
     ["expected an integer or a mapping, not a number 2.5"]),
    ("concurrency-int-and-object", "  concurrency: 4\n  concurrency: {max: 10}\n",
     "x.reactor.yaml:6: /:", ["duplicate key 'concurrency'"]),
    ("concurrency-zero", "  concurrency: 0\n", "x.reactor.yaml:5: /policies/concurrency:",
     ["0 is less than the minimum of 1", "fix: use a whole number of at least 1"]),
    ("concurrency-empty", "  concurrency: {}\n", "x.reactor.yaml:5: /policies/concurrency:",
     ["an empty mapping is not allowed here", "fix: give at least one of perInstance, max, key"]),
    ("concurrency-max-zero", "  concurrency: {max: 0}\n",
     "x.reactor.yaml:5: /policies/concurrency/max:", ["0 is less than the minimum of 1"]),
    ("concurrency-max-negative", "  concurrency:\n    key: $customerId\n    max: -2\n",
     "x.reactor.yaml:7: /policies/concurrency/max:", ["-2 is less than the minimum of 1"]),
    ("concurrency-per-instance-string", "  concurrency: {perInstance: two}\n",
     "x.reactor.yaml:5: /policies/concurrency/perInstance:",
     ["expected an integer, not a string 'two'", "fix: use a whole number of at least 1"]),
    ("concurrency-unknown-field", "  concurrency:\n    perInstace: 2\n",
     "x.reactor.yaml:6: /policies/concurrency/perInstace:",
     ["unknown key 'perInstace'", "did you mean 'perInstance'?",
      "allowed keys here: key, max, perInstance"]),
    # --- concurrency key -------------------------------------------------------------------------
    ("key-now", "  concurrency:\n    key: {$concat: ['$customerId', {$toString: '$$NOW'}]}\n",
     "x.reactor.yaml:6: /policies/concurrency/key/$concat/1/$toString:",
     ["$$NOW in the concurrency key: it is computed once, when a task is planned",
      "fix: compute it from document fields only"]),
    ("key-cluster-time", "  concurrency: {key: $$CLUSTER_TIME, max: 2}\n",
     "x.reactor.yaml:5: /policies/concurrency/key:", ["$$CLUSTER_TIME in the concurrency key"]),
    ("key-misspelled-path", "  concurrency:\n    key: $customerID\n",
     "x.reactor.yaml:6: /policies/concurrency/key:",
     ["the concurrency key reads '$customerID', but the document schema (order.schema.json) "
      "declares no field 'customerID'", "every task would get the same key",
      "fix: did you mean '$customerId'?"]),
    ("key-misspelled-nested-path",
     "  concurrency:\n    key:\n      $concat: ['$status', '-', '$customer.teir']\n",
     "x.reactor.yaml:7: /policies/concurrency/key/$concat/2:",
     ["declares no field 'teir' in 'customer'", "fix: did you mean '$customer.tier'?"]),
    ("key-without-dollar", "  concurrency: {key: customerId}\n",
     "x.reactor.yaml:5: /policies/concurrency/key:",
     ["the concurrency key 'customerId' reads no document field",
      "fix: write '$customerId' (with a $)"]),
    ("key-constant", "  concurrency: {key: 7}\n", "x.reactor.yaml:5: /policies/concurrency/key:",
     ["the concurrency key 7 reads no document field", "use max without key"]),
    ("key-unknown-operator", "  concurrency: {key: {$toUpperCase: $status}}\n",
     "x.reactor.yaml:5: /policies/concurrency/key/$toUpperCase:",
     ["unknown expression operator $toUpperCase"]),
    ("key-random", "  concurrency: {key: {$mod: [{$rand: {}}, 4]}}\n",
     "x.reactor.yaml:5: /policies/concurrency/key/$mod/0/$rand:", ["operator $rand is random"]),
    # --- rate limit ------------------------------------------------------------------------------
    ("rate-per-without-unit", "  rateLimit: {max: 100, per: 1000}\n",
     "x.reactor.yaml:5: /policies/rateLimit/per:",
     ["invalid duration 1000", "fix: write a duration such as 500ms, 10s"]),
    ("rate-per-zero", "  rateLimit: {max: 100, per: 0ms}\n",
     "x.reactor.yaml:5: /policies/rateLimit/per:",
     ["rate limit period '0ms' is zero", "fix: use a period of at least 1ms"]),
    ("rate-max-zero", "  rateLimit: {max: 0, per: 1s}\n",
     "x.reactor.yaml:5: /policies/rateLimit/max:", ["0 is less than the minimum of 1"]),
    ("rate-missing-per", "  rateLimit: {max: 10}\n", "x.reactor.yaml:5: /policies/rateLimit:",
     ["'per' is a required property", "fix: add the missing key"]),
    ("rate-unknown-field", "  rateLimit: {max: 10, per: 1s, burts: 20}\n",
     "x.reactor.yaml:5: /policies/rateLimit/burts:",
     ["unknown key 'burts'", "allowed keys here: max, per"]),
    ("rate-not-an-object", "  rateLimit: 100/s\n", "x.reactor.yaml:5: /policies/rateLimit:",
     ["expected a mapping, not a string '100/s'", "fix: write rateLimit: {max: 100, per: 1s}"]),
    ("rate-misspelled", "  ratelimit: {max: 10, per: 1s}\n",
     "x.reactor.yaml:5: /policies/ratelimit:",
     ["unknown key 'ratelimit'", "did you mean 'rateLimit'?"]),
    # --- priority --------------------------------------------------------------------------------
    ("priority-too-high", "  priority: 1001\n", "x.reactor.yaml:5: /policies/priority:",
     ["1001 is greater than the maximum of 1000",
      "fix: use a whole number from -1000 to 1000"]),
    ("priority-too-low", "  priority: {static: -1001}\n",
     "x.reactor.yaml:5: /policies/priority/static:",
     ["-1001 is less than the minimum of -1000"]),
    ("priority-word", "  priority: high\n", "x.reactor.yaml:5: /policies/priority:",
     ["expected an integer or a mapping, not a string 'high'", "fix: write priority: 10 or"]),
    ("priority-empty", "  priority: {}\n", "x.reactor.yaml:5: /policies/priority:",
     ["an empty mapping is not allowed here", "fix: give static, expression or both"]),
    ("priority-unknown-field", "  priority: {statik: 3}\n",
     "x.reactor.yaml:5: /policies/priority/statik:",
     ["unknown key 'statik'", "did you mean 'static'?"]),
    ("priority-now", "  priority:\n    expression: {$subtract: ['$$NOW', '$total']}\n",
     "x.reactor.yaml:6: /policies/priority/expression/$subtract/0:",
     ["$$NOW in the priority expression"]),
    ("priority-misspelled-path", "  priority: {expression: {$multiply: ['$totl', 2]}}\n",
     "x.reactor.yaml:5: /policies/priority/expression/$multiply/0:",
     ["the priority expression reads '$totl'", "fall back to the static priority",
      "fix: did you mean '$total'?"]),
    ("priority-constant-expression", "  priority: {expression: 5}\n",
     "x.reactor.yaml:5: /policies/priority/expression:",
     ["the priority expression 5 reads no document field", "use static: <n>"]),
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with the order schema and no definitions yet."""
    write_files(tmp_path, {"schemas/order.schema.json": SCHEMA_FILE})
    return tmp_path


@pytest.mark.parametrize(("body", "where", "expect"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_mistakes_are_located_explained_and_write_nothing(project: Path, body: str, where: str,
                                                          expect: list[str]) -> None:
    write_files(project, policies(body))
    before = snapshot(project)
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 1, result.text
    assert f"schemas/{where}" in result.err, f"expected {where!r} in:\n{result.err}"
    for text in expect:
        assert text in result.err, f"expected {text!r} in:\n{result.err}"
    assert "fix: " in result.err, f"no fix suggested:\n{result.err}"
    assert snapshot(project) == before, "a failed build changed files"


def test_problems_of_several_policies_are_reported_together(project: Path) -> None:
    write_files(project, policies("  concurrency: {key: $custmerId}\n"
                                  "  rateLimit: {max: 1, per: 0s}\n"
                                  "  priority: {expression: $$NOW}\n"))
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 1
    assert "3 problem(s)" in result.err, result.err
    for pointer in ("/policies/concurrency/key:", "/policies/rateLimit/per:",
                    "/policies/priority/expression:"):
        assert pointer in result.err
