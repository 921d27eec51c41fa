"""Every error path of ``reactgen build``: exit code 1, a message naming the file, the JSON
pointer, the line (YAML) and a fix, and nothing written (the output tree is compared byte for
byte before and after)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from generator_support import reactgen, snapshot, write_files

ORDER_SCHEMA = """{
  "title": "Order",
  "type": "object",
  "properties": {
    "_id": {"type": "string"},
    "status": {"type": "string"},
    "total": {"type": "number"}
  },
  "required": ["_id"]
}
"""

BASE = {
    "schemas/order.schema.json": ORDER_SCHEMA,
    "schemas/sync_orders.reactor.yaml": (
        "name: sync_orders\n"
        "collection: orders\n"
        "schema:\n"
        "  $ref: order.schema.json\n"
        "trigger:\n"
        "  filter: {status: paid}\n"
        "  watch: [status, total]\n"
    ),
}


TIME_REASON = ("the moment this filter's verdict changes cannot be computed from one field, so "
               "the runtime could not plan it when time passes")
TIME_FIX = "fix: compare one date field with $$NOW"


def definition(body: str, collection: str = "orders") -> str:
    """A definition on ``orders`` with the base schema followed by ``body``."""
    return f"collection: {collection}\nschema:\n  $ref: order.schema.json\n{body}"


@dataclass
class Case:
    """One broken input: files added to (or replacing) the valid base project."""

    id: str
    files: dict[str, str]
    where: str
    expect: list[str] = field(default_factory=list)
    args: tuple[str, ...] = ("build", "schemas", "--out", "app")


CASES = [
    # --- syntax ------------------------------------------------------------------------------
    Case("yaml-syntax", {"schemas/broken.reactor.yaml": (
        "collection: orders\nschema:\n  $ref: order.schema.json\ntrigger:\n"
        "  filter: {status: paid\n  watch: [status]\n")},
        "schemas/broken.reactor.yaml:5: /:", ["invalid YAML", "(column 11; noticed on line 6)",
                                              "fix:"]),
    Case("yaml-bad-indentation", {"schemas/broken.reactor.yaml": (
        "collection: orders\nschema:\n  $ref: order.schema.json\n trigger: {}\n")},
        "schemas/broken.reactor.yaml:4: /:", ["invalid YAML", "fix:"]),
    Case("yaml-duplicate-key", {"schemas/broken.reactor.yaml": (
        "collection: orders\nschema:\n  $ref: order.schema.json\ncollection: users\n")},
        "schemas/broken.reactor.yaml:4: /:", ["duplicate key 'collection'", "fix:"]),
    Case("json-syntax", {"schemas/broken.reactor.json": (
        '{\n  "collection": "orders",\n  "schema": {"$ref": "order.schema.json"},\n}\n')},
        "schemas/broken.reactor.json:4: /:", ["invalid JSON", "fix:"]),
    Case("not-a-mapping", {"schemas/broken.reactor.yaml": "- collection: orders\n"},
         "schemas/broken.reactor.yaml:1: /:", ["must be a mapping", "fix:"]),
    # --- definition format -------------------------------------------------------------------
    Case("unknown-key", {"schemas/broken.reactor.yaml": definition("colection: orders\n")},
         "schemas/broken.reactor.yaml:4: /colection:",
         ["unknown key 'colection'", "did you mean 'collection'?",
          "allowed keys here: $schema, collection, database, description, model, name, "
          "policies, schema, trigger"]),
    Case("unknown-nested-key", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  retry:\n    strategy: fixed\n    maxAttempt: 3\n")},
        "schemas/broken.reactor.yaml:7: /policies/retry/maxAttempt:",
        ["unknown key 'maxAttempt'", "did you mean 'maxAttempts'?", "allowed keys here:"]),
    Case("missing-required", {"schemas/broken.reactor.yaml": "name: x\nschema: {}\n"},
         "schemas/broken.reactor.yaml:1: /:", ["'collection' is a required property",
                                               "fix: add the missing key"]),
    Case("bad-duration", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  timeout: 5 minutes\n")},
        "schemas/broken.reactor.yaml:5: /policies/timeout:",
        ["invalid duration '5 minutes'", "500ms, 10s, 5m, 1h, 7d"]),
    Case("bad-duration-number", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  retry: {strategy: fixed, interval: 30}\n")},
        "schemas/broken.reactor.yaml:5: /policies/retry/interval:",
        ["invalid duration 30", "500ms, 10s"]),
    Case("bad-debounce-duration", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  debounce: soon\n")},
        "schemas/broken.reactor.yaml:5: /policies/debounce:",
        ["invalid duration 'soon'", "500ms, 10s"]),
    Case("bad-debounce-maxwait", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  debounce:\n    delay: 1s\n    maxWait: 1 hour\n")},
        "schemas/broken.reactor.yaml:7: /policies/debounce/maxWait:",
        ["invalid duration '1 hour'"]),
    Case("bad-enum", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  retry: {strategy: exponentail}\n")},
        "schemas/broken.reactor.yaml:5: /policies/retry/strategy:",
        ["invalid value 'exponentail'",
         'one of: "fixed", "linear", "exponential", "series", "cron"']),
    Case("bad-cleanup-enum", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  cleanup:\n    when: always\n")},
        "schemas/broken.reactor.yaml:6: /policies/cleanup/when:",
        ["invalid value 'always'", '"sourceDeleted"']),
    Case("bad-name-pattern", {"schemas/broken.reactor.yaml": "name: 1st\n" + definition("")},
         "schemas/broken.reactor.yaml:1: /name:", ["does not match", "fix:"]),
    Case("bad-file-name", {"schemas/1st.reactor.yaml": definition("")},
         "schemas/1st.reactor.yaml:1: /:", ["not a valid reactor name", "fix: add name:"]),
    # --- schemas -----------------------------------------------------------------------------
    Case("missing-ref-file", {"schemas/broken.reactor.yaml": (
        "collection: orders\nschema:\n  $ref: nowhere/order.schema.json\n")},
        "schemas/broken.reactor.yaml:3: /schema/$ref:",
        ["schema file 'nowhere/order.schema.json' not found",
         "fix: fix the path (it is relative to the definition file)"]),
    Case("invalid-inline-json-schema", {"schemas/broken.reactor.yaml": (
        "collection: orders\nschema:\n  type: object\n  properties:\n"
        "    total: {type: money}\n")},
        "schemas/broken.reactor.yaml:5: /schema/properties/total/type:",
        ["invalid JSON Schema", "'money' is not valid", "fix: see https://json-schema.org"]),
    Case("invalid-json-schema-file", {
        "schemas/bad.schema.json": '{\n  "type": "object",\n  "required": "status"\n}\n',
        "schemas/broken.reactor.yaml": "collection: orders\nschema: {$ref: bad.schema.json}\n"},
        "schemas/bad.schema.json: /required:", ["invalid JSON Schema", "fix:"]),
    Case("json-syntax-in-schema-file", {
        "schemas/bad.schema.json": '{\n  "type": "object",\n  "properties": {,}\n}\n',
        "schemas/broken.reactor.yaml": "collection: orders\nschema: {$ref: bad.schema.json}\n"},
        "schemas/bad.schema.json:3: /:", ["invalid JSON in schema file", "fix:"]),
    Case("yaml-schema-file-not-object", {
        "schemas/bad.schema.yaml": "type: object\nproperties:\n  _id: {type: string}\n"
                                   "  total: {type: number, minimum: [0]}\n",
        "schemas/broken.reactor.yaml": "collection: orders\nschema: {$ref: bad.schema.yaml}\n"},
        "schemas/bad.schema.yaml:4: /properties/total/minimum:", ["invalid JSON Schema"]),
    Case("non-object-schema", {"schemas/broken.reactor.yaml": (
        "collection: orders\nschema:\n  type: array\n  items: {type: string}\n")},
        "schemas/broken.reactor.yaml:3: /schema/type:",
        ["a document schema must describe an object, not 'array'", 'fix: set "type": "object"']),
    Case("non-object-schema-file", {
        "schemas/list.schema.json": '["not", "a", "schema"]\n',
        "schemas/broken.reactor.yaml": "collection: orders\nschema: {$ref: list.schema.json}\n"},
        "schemas/list.schema.json:1: /:", ["a JSON Schema must be an object, not list", "fix:"]),
    # --- names -------------------------------------------------------------------------------
    Case("duplicate-names", {"schemas/copy.reactor.yaml": "name: sync_orders\n" + definition(
        "")},
        "schemas/sync_orders.reactor.yaml:1: /name:",
        ["reactor 'sync_orders' has the same name as the one defined in copy.reactor.yaml",
         "fix: give one of them a different 'name'"]),
    Case("module-name-collision", {"schemas/dash.reactor.yaml": "name: sync-orders\n" + definition(
        "")},
        "schemas/sync_orders.reactor.yaml:1: /name:",
        ["maps to the same Python module 'sync_orders' as 'sync-orders'",
         "fix: give one of them a different 'name'"]),
    Case("model-module-collision", {"schemas/dots.reactor.yaml": definition("", "orders.")},
         "schemas/sync_orders.reactor.yaml:2: /collection:",
         ["collection 'orders' and 'orders.' (dots.reactor.yaml) map to the same model module "
          "models/orders.py", "fix: rename one of the collections"]),
    Case("different-schemas-one-collection", {"schemas/other.reactor.yaml": (
        "collection: orders\nschema:\n  title: Order\n  type: object\n")},
        "schemas/sync_orders.reactor.yaml:3: /schema:",
        ["reactors on collection 'orders' must share one document schema",
         "other.reactor.yaml", "fix: point both definitions at the same schema file"]),
    Case("different-models-one-collection", {"schemas/other.reactor.yaml": (
        "collection: orders\nmodel: Purchase\nschema:\n  $ref: order.schema.json\n")},
        "schemas/sync_orders.reactor.yaml:1: /model:",
        ["the model name differs from other.reactor.yaml"]),
    Case("reserved-model-name", {"schemas/sync_orders.reactor.yaml": (
        "name: sync_orders\ncollection: orders\nmodel: RetryPolicy\n"
        "schema: {$ref: order.schema.json}\n")},
        "schemas/sync_orders.reactor.yaml:3: /model:",
        ["model name 'RetryPolicy' is used by the generated modules",
         "fix: choose another name, e.g. RetryPolicyDocument"]),
    Case("reserved-database-module-name", {"schemas/x.reactor.yaml": "name: database-default\n"
                                           + definition("")},
         "schemas/x.reactor.yaml:1: /name:",
         ["names starting with 'database' are reserved", "fix: choose another name"]),
    Case("database-pipeline-collision", {
        "schemas/x.reactor.yaml": "database: shop-eu\n" + definition("", "carts"),
        "schemas/y.reactor.yaml": "database: shop_eu\n" + definition("", "carts")},
        "schemas/y.reactor.yaml:1: /database:",
        ["both map to pipelines/database_shop_eu.json", "fix: rename one of the databases"]),
    # --- filters -----------------------------------------------------------------------------
    Case("filter-where", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter:\n    $where: 'this.total > 1'\n")},
        "schemas/broken.reactor.yaml:6: /trigger/filter/$where:",
        ["operator $where runs JavaScript", "fix: express the condition"]),
    Case("filter-text", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter:\n    $text: {$search: paid}\n")},
        "schemas/broken.reactor.yaml:6: /trigger/filter/$text:",
        ["operator $text needs a text index", "fix:"]),
    Case("filter-function", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter:\n    $expr:\n      $function: {body: 'return true', args: [], "
        "lang: js}\n")},
        "schemas/broken.reactor.yaml:7: /trigger/filter/$expr/$function:",
        ["operator $function runs JavaScript", "fix:"]),
    Case("filter-unknown-operator", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter:\n    total: {$foo: 3}\n")},
        "schemas/broken.reactor.yaml:6: /trigger/filter/total/$foo:",
        ["unknown query operator $foo", "fix: check the spelling"]),
    Case("filter-unknown-expression-operator", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter: {$gt: [{$foo: '$total'}, 1]}\n")},
        "schemas/broken.reactor.yaml:5: /trigger/filter/$gt/0/$foo:",
        ["unknown expression operator $foo", "fix:"]),
    Case("filter-rand", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter: {$lt: [{$rand: {}}, 0.5]}\n")},
        "schemas/broken.reactor.yaml:5: /trigger/filter/$lt/0/$rand:",
        ["operator $rand is random", "fix:"]),
    Case("filter-now-in-query", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter:\n    dueAt: {$lt: $$NOW}\n")},
        "schemas/broken.reactor.yaml:6: /trigger/filter/dueAt/$lt:",
        ["$$NOW is not evaluated in a query condition", "fix: use an expression filter"]),
    Case("filter-expression-operator-in-query", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter:\n    status: paid\n    $gt: ['$total', 1]\n")},
        "schemas/broken.reactor.yaml:7: /trigger/filter/$gt:",
        ["$gt must be used inside a field condition", "fix: write {field: {$gt: value}}, or "
         "wrap an aggregation expression in $expr"]),
    Case("filter-unknown-variable", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter: {$lt: ['$dueAt', '$$TODAY']}\n")},
        "schemas/broken.reactor.yaml:5: /trigger/filter/$lt/1:",
        ["unknown system variable $$TODAY", "fix: supported: $$NOW"]),
    # --- time-driven triggers ($$NOW whose moment of change cannot be planned) -----------------
    Case("time-cluster-time", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  filter: {$lte: ['$dueAt', '$$CLUSTER_TIME']}\n")},
        "schemas/broken.reactor.yaml:5: /trigger/filter/$lte/1:",
        ["$$CLUSTER_TIME is a BSON Timestamp", "fix: compare a date field with $$NOW"]),
    *[Case(f"time-{id_}", {"schemas/broken.reactor.yaml": definition(
        f"trigger:\n  filter: {flt}\n")},
        f"schemas/broken.reactor.yaml:5: /trigger/filter{pointer}:",
        [message, TIME_REASON, TIME_FIX]) for id_, flt, pointer, message in [
        ("two-fields", "{$lte: [{$add: ['$start', '$durationMs']}, '$$NOW']}", "/$lte/0/$add",
         "$$NOW is compared with $add of '$start' and '$durationMs'"),
        ("now-plus-field", "{$lte: ['$dueAt', {$add: ['$$NOW', '$graceMs']}]}", "/$lte/1/$add",
         "$$NOW is used in $add of '$$NOW' and '$graceMs'"),
        ("date-diff", "{$gt: [{$dateDiff: {startDate: '$createdAt', endDate: '$$NOW', "
         "unit: day}}, 3]}", "/$gt/0/$dateDiff", "$$NOW is used in $dateDiff"),
        ("hour", "{$eq: [{$hour: '$$NOW'}, 9]}", "/$eq/0/$hour", "$$NOW is used in $hour"),
        ("day-of-week", "{$in: [{$dayOfWeek: '$$NOW'}, [1, 7]]}", "/$in/0/$dayOfWeek",
         "$$NOW is used in $dayOfWeek"),
        ("month-unit", "{$lte: ['$dueAt', {$dateSubtract: {startDate: '$$NOW', unit: month, "
         "amount: 1}}]}", "/$lte/1/$dateSubtract/unit",
         "$$NOW is used in $dateSubtract with unit 'month' (months have no fixed length)"),
        ("year-unit-on-field", "{$lte: [{$dateAdd: {startDate: '$dueAt', unit: year, "
         "amount: 1}}, '$$NOW']}", "/$lte/0/$dateAdd/unit",
         "$$NOW is compared with $dateAdd with unit 'year' (years have no fixed length)"),
        ("quarter-unit", "{$lt: ['$dueAt', {$dateAdd: {startDate: '$$NOW', unit: quarter, "
         "amount: 1}}]}", "/$lt/1/$dateAdd/unit", "unit 'quarter'"),
        ("variable-amount", "{$lt: ['$dueAt', {$dateAdd: {startDate: '$$NOW', unit: day, "
         "amount: '$days'}}]}", "/$lt/1/$dateAdd/amount",
         "$dateAdd with an amount that is not a constant integer"),
        ("timezone", "{$lt: ['$dueAt', {$dateAdd: {startDate: '$$NOW', unit: day, amount: 1, "
         "timezone: Europe/Paris}}]}", "/$lt/1/$dateAdd/timezone", "$dateAdd with a timezone"),
        ("cond", "{$lt: ['$dueAt', {$cond: ['$urgent', '$$NOW', '$dueAt']}]}", "/$lt/1/$cond",
         "$$NOW is used in $cond"),
        ("switch", "{$switch: {branches: [{case: {$lt: ['$dueAt', '$$NOW']}, then: true}], "
         "default: false}}", "/$switch", "$$NOW is used in $switch"),
        ("map", "{$anyElementTrue: [{$map: {input: '$steps', in: {$lt: ['$$this.at', "
         "'$$NOW']}}}]}", "/$anyElementTrue/0/$map", "$$NOW is used in $map"),
        ("filter", "{$gt: [{$size: {$filter: {input: '$steps', cond: {$lt: ['$$this.at', "
         "'$$NOW']}}}}, 0]}", "/$gt/0/$size/$filter", "$$NOW is used in $filter"),
        ("let", "{$let: {vars: {now: '$$NOW'}, in: {$lt: ['$dueAt', '$$now']}}}", "/$let",
         "$$NOW is used in $let"),
        ("constant", "{$gt: ['$$NOW', {$date: '2030-01-01T00:00:00Z'}]}", "/$gt",
         "$$NOW is compared with a value that is not one document field"),
        ("elapsed-vs-field", "{$gt: [{$subtract: ['$$NOW', '$createdAt']}, '$ttlMs']}", "/$gt",
         "the time between '$createdAt' and $$NOW is compared with something other than a "
         "constant integer"),
        ("bare-now", "{$and: ['$$NOW', {$eq: ['$status', open]}]}", "/$and/0",
         "$$NOW is not compared with a document field"),
        ("in-query-expr", "{status: open, $or: [{$expr: {$lt: [{$hour: '$$NOW'}, 9]}}]}",
         "/$or/0/$expr/$lt/0/$hour", "$$NOW is used in $hour"),
        ("in-elem-match", "{steps: {$elemMatch: {kind: call, $expr: {$lt: ['$at', '$$NOW']}}}}",
         "/steps/$elemMatch", "$$NOW is used in $elemMatch"),
    ]],
    Case("time-in-watch", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  watch:\n    status: 1\n    ageMs: {$subtract: ['$$NOW', '$createdAt']}\n")},
        "schemas/broken.reactor.yaml:7: /trigger/watch/ageMs/$subtract/0:",
        ["$$NOW in a watched value", "would differ on every evaluation",
         "fix: watch the date field itself"]),
    # --- watch -------------------------------------------------------------------------------
    Case("watch-exclusion", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  watch:\n    status: 1\n    total: 0\n")},
        "schemas/broken.reactor.yaml:7: /trigger/watch/total:",
        ["exclusion (0/false) is not allowed", "fix: list the fields to watch instead"]),
    Case("watch-nested-projection", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  watch:\n    address: {city: 1}\n")},
        "schemas/broken.reactor.yaml:6: /trigger/watch/address:",
        ["nested projections are not supported", "fix: watch dotted paths instead"]),
    Case("watch-rejected-operator", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  watch:\n    lucky: {$rand: {}}\n")},
        "schemas/broken.reactor.yaml:6: /trigger/watch/lucky/$rand:", ["operator $rand"]),
    Case("watch-dollar-path", {"schemas/broken.reactor.yaml": definition(
        "trigger:\n  watch: [$status]\n")},
        "schemas/broken.reactor.yaml:5: /trigger/watch/0:",
        ["'$status' does not match", "fix: watch document paths such as status"]),
    # --- policies ----------------------------------------------------------------------------
    Case("series-without-delays", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  retry:\n    strategy: series\n")},
        "schemas/broken.reactor.yaml:5: /policies/retry:",
        ["the series strategy needs 'delays'", "fix: add delays: [1s, 10s, 1m]"]),
    Case("cron-without-cron", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  retry:\n    strategy: cron\n")},
        "schemas/broken.reactor.yaml:5: /policies/retry:",
        ["the cron strategy needs 'cron'", "fix: add cron:"]),
    Case("bad-cron-expression", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  retry: {strategy: cron, cron: every hour}\n")},
        "schemas/broken.reactor.yaml:5: /policies/retry/cron:",
        ["'every hour' does not match the required form", "fix: five fields"]),
    Case("maxwait-shorter-than-delay", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  debounce:\n    delay: 10s\n    maxWait: 5s\n")},
        "schemas/broken.reactor.yaml:7: /policies/debounce/maxWait:",
        ["maxWait is shorter than the debounce delay", "fix: make maxWait at least as long"]),
    Case("retry-min-above-max", {"schemas/broken.reactor.yaml": definition(
        "policies:\n  retry: {min: 1h, max: 1m}\n")},
        "schemas/broken.reactor.yaml:5: /policies/retry/min:",
        ["retry min is longer than max", "fix: make min <= max"]),
    # --- command line ------------------------------------------------------------------------
    Case("output-not-a-package-name", {}, "my-app: /:",
         ["output folder name 'my-app' is not a valid Python package name",
          "fix: pass --out with a folder named like a Python package"],
         ("build", "schemas", "--out", "my-app")),
    Case("output-is-a-keyword", {}, "class: /:",
         ["output folder name 'class' is a Python keyword", "fix:"],
         ("build", "schemas", "--out", "class")),
    Case("output-shadows-runtime", {}, "runtime: /:",
         ["output folder name 'runtime' would shadow a module", "fix:"],
         ("build", "schemas", "--out", "runtime")),
    Case("output-starts-with-digit", {}, "2app: /:",
         ["output folder name '2app' is not a valid Python package name"],
         ("build", "schemas", "--out", "2app")),
    Case("no-definitions", {"empty/README.md": "nothing here\n"}, "empty: /:",
         ["no reactor definitions found", "fix: add files named <name>.reactor.yaml"],
         ("build", "empty", "--out", "app")),
]


@pytest.fixture
def project(tmp_path: Path, model_cache: Path) -> Path:
    """A project with a valid definition already built into ``app``."""
    write_files(tmp_path, BASE)
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_is_located_explained_and_writes_nothing(case: Case, project: Path) -> None:
    write_files(project, case.files)
    before = snapshot(project)
    result = reactgen(project, *case.args)
    assert result.code == 1, result.text
    assert "nothing was written" in result.err
    assert case.where in result.err, f"expected {case.where!r} in:\n{result.err}"
    assert result.err.count(case.where) == 1, f"reported more than once:\n{result.err}"
    for text in case.expect:
        assert text in result.err, f"expected {text!r} in:\n{result.err}"
    assert "fix: " in result.err, f"no fix suggested:\n{result.err}"
    assert snapshot(project) == before, "a failed build changed files"


@pytest.mark.parametrize("case", [c for c in CASES if c.args[0] == "build"
                                  and c.args[2:] == ("--out", "app")], ids=lambda c: c.id)
def test_validate_and_check_report_the_same_problem(case: Case, project: Path) -> None:
    write_files(project, case.files)
    before = snapshot(project)
    for command in ("validate", "check"):
        result = reactgen(project, command, case.args[1])
        assert result.code == 1, (command, result.text)
        assert case.where in result.err, (command, result.err)
    assert snapshot(project) == before


def test_all_problems_are_reported_at_once(project: Path) -> None:
    write_files(project, {
        "schemas/a.reactor.yaml": definition("policies:\n  timeout: soon\n"),
        "schemas/b.reactor.yaml": definition("trigger:\n  filter: {$where: 'x'}\n"),
        "schemas/c.reactor.yaml": "collection: [\n",
    })
    before = snapshot(project)
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 1
    assert "3 problem(s)" in result.err
    for where in ("schemas/a.reactor.yaml:5: /policies/timeout:",
                  "schemas/b.reactor.yaml:5: /trigger/filter/$where:",
                  "schemas/c.reactor.yaml:2: /:"):
        assert where in result.err, result.err
    assert snapshot(project) == before


def test_failed_first_build_creates_no_output_folder(tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/x.reactor.yaml": "collection: orders\nschema: {type: x}\n"})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 1
    assert not (tmp_path / "app").exists()
    assert snapshot(tmp_path) == {"schemas/x.reactor.yaml": b"collection: orders\nschema: "
                                                           b"{type: x}\n"}


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert reactgen(tmp_path, "build").code == 2
    assert reactgen(tmp_path, "frobnicate").code == 2
    assert reactgen(tmp_path, "new", "x").code == 2  # --collection is required
