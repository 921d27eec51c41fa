"""Hostile definitions (issue 10, items 10 and 11): every YAML/JSON edge case, bad ``$ref``,
bad Extended JSON literal and non-finite number is a problem with file, line, pointer and a
fix, never a traceback, and nothing is written; what builds also imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from generator_support import REPO, reactgen, snapshot, write_files

from generator.bounded_load import MAX_FILE_BYTES, MAX_NESTING, MAX_NODES
from generator.errors import Problem
from generator.loader import python_pattern
from generator.output_verify import output_problems

ORDER_SCHEMA = json.dumps({
    "title": "Order", "type": "object",
    "properties": {"_id": {"type": "string"}, "status": {"type": "string"},
                   "total": {"type": "number"}, "rating": True},
})
FILE = "schemas/x.reactor.yaml"


def definition(body: str = "") -> str:
    """A valid definition on ``orders`` followed by ``body``."""
    return f"collection: orders\nschema:\n  $ref: order.schema.json\n{body}"


def alias_bomb() -> str:
    """"Billion laughs": nine levels of nine aliases (9^9 values once expanded)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    """A project (the order schema plus ``files``) whose build must fail with ``expect``."""

    id: str
    files: dict[str, str]
    where: str
    expect: list[str] = field(default_factory=list)


def nested(depth: int) -> str:
    return "{a: " * depth + "1" + "}" * depth


CASES = [
    # --- item 10: YAML and JSON edge cases ---------------------------------------------------
    Case("nesting-1000", {FILE: definition(f"trigger:\n  filter: {nested(1000)}\n")},
         f"{FILE}:5: /:", [f"nested more than {MAX_NESTING} levels deep"]),
    Case("json-nesting-1000", {"schemas/x.reactor.json": (
        '{"collection": "orders", "schema": {"$ref": "order.schema.json"},\n"trigger": '
        '{"filter": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}}\n")},
        "schemas/x.reactor.json:2: /:", ["nested more than"]),
    Case("int-4301-digits", {FILE: definition(f"policies:\n  history: {'9' * 4301}\n")},
         f"{FILE}:5: /policies/history:", ["integer with 4301 digits does not fit in 64 bits",
                                           "fix: use an integer between"]),
    Case("json-int-4301-digits", {"schemas/x.reactor.json": (
        '{"collection": "orders", "schema": {"$ref": "order.schema.json"},\n'
        '"trigger": {"filter": {"total": ' + "9" * 4301 + "}}}\n")},
        "schemas/x.reactor.json: /trigger/filter/total:", ["4301 digits"]),
    Case("int-beyond-64-bits", {FILE: definition("trigger:\n  filter: {total: "
                                                 "9223372036854775808}\n")},
         f"{FILE}:5: /trigger/filter/total:", ["does not fit in 64 bits"]),
    Case("complex-key", {FILE: definition("trigger:\n  filter:\n    ? [a, b]\n    : 1\n")},
         f"{FILE}:6: /trigger/filter:", ["a mapping key must be a string, not a list"]),
    Case("int-key-top", {FILE: definition("1: x\n")}, f"{FILE}:4: /1:",
         ["mapping key '1' is a number, not a string", "fix: quote it"]),
    Case("bool-key-top", {FILE: definition("true: x\n")}, f"{FILE}:4: /true:",
         ["mapping key 'true' is a boolean"]),
    Case("null-key-top", {FILE: definition("null: x\n")}, f"{FILE}:4: /null:",
         ["mapping key 'null' is null"]),
    Case("int-key-filter", {FILE: definition("trigger:\n  filter: {1: x}\n")},
         f"{FILE}:5: /trigger/filter/1:", ["is a number, not a string"]),
    Case("bool-key-filter", {FILE: definition("trigger:\n  filter: {true: x}\n")},
         f"{FILE}:5: /trigger/filter/true:", ["is a boolean, not a string"]),
    Case("null-key-filter", {FILE: definition("trigger:\n  filter: {status: {null: x}}\n")},
         f"{FILE}:5: /trigger/filter/status/null:", ["is null, not a string"]),
    Case("alias-bomb", {FILE: alias_bomb() + definition()}, f"{FILE}:",
         [f"expands to more than {MAX_NODES} values", "fix: remove the repeated aliases"]),
    Case("too-large", {FILE: definition("description: '" + "x" * MAX_FILE_BYTES + "'\n")},
         f"{FILE}: /:", ["file is larger than 1048576 bytes (1 MiB)"]),
    # --- item 10: $ref values ----------------------------------------------------------------
    Case("ref-nul", {FILE: 'collection: orders\nschema:\n  $ref: "order\\0.json"\n'},
         f"{FILE}:3: /schema/$ref:", ["control character"]),
    Case("ref-300", {FILE: f"collection: orders\nschema:\n  $ref: {'a' * 300}.json\n"},
         f"{FILE}:3: /schema/$ref:", ["305 characters long (at most 255)"]),
    Case("ref-absolute", {FILE: "collection: orders\nschema:\n  $ref: /etc/passwd\n"},
         f"{FILE}:3: /schema/$ref:", ["is an absolute path"]),
    Case("ref-outside", {FILE: "collection: orders\nschema:\n  $ref: ../outside.json\n",
                         "outside.json": '{"type": "object"}'},
         f"{FILE}:3: /schema/$ref:", ["outside the schemas folder",
                                      "--allow-ref-outside DIR"]),
    Case("ref-url", {FILE: "collection: orders\nschema:\n  $ref: https://x.test/a.json\n"},
         f"{FILE}:3: /schema/$ref:", ["looks like a URL"]),
    Case("nested-ref-to-a-file", {"schemas/order.schema.json": json.dumps(
        {"type": "object", "properties": {"a": {"$ref": "/etc/hosts"}}}, indent=1),
        FILE: definition()},
        "schemas/order.schema.json: /properties/a/$ref:",
        ["reference '/etc/hosts' to another file", "only local references"]),
    # --- item 10: Extended JSON --------------------------------------------------------------
    Case("oid-invalid", {FILE: definition("trigger:\n  filter: {_id: {$oid: x}}\n")},
         f"{FILE}:5: /trigger/filter/_id:", ["invalid MongoDB Extended JSON", "ObjectId"]),
    Case("date-huge", {FILE: definition(
        "trigger:\n  filter: {d: {$gt: {$date: {$numberLong: '99999999999999999999'}}}}\n")},
        f"{FILE}:5: /trigger/filter/d/$gt:", ["invalid MongoDB Extended JSON"]),
    Case("decimal-bad", {FILE: definition("trigger:\n  filter: {total: {$numberDecimal: "
                                          "abc}}\n")},
         f"{FILE}:5: /trigger/filter/total:", ["not a decimal number"]),
    Case("float-1e6145", {"schemas/x.reactor.json": (
        '{"collection": "orders", "schema": {"$ref": "order.schema.json"},\n'
        '"trigger": {"filter": {"total": 1e6145}}}\n')},
        "schemas/x.reactor.json: /trigger/filter/total:", ["infinity is not allowed"]),
    Case("yaml-float-1e6145", {FILE: definition("trigger:\n  filter: {total: 1.0e+6145}\n")},
         f"{FILE}:5: /trigger/filter/total:", ["infinity is not allowed"]),
    Case("bad-literal-in-expression", {FILE: definition(
        "trigger:\n  filter: {$expr: {$eq: ['$_id', {$oid: nope}]}}\n")},
        f"{FILE}:5: /trigger/filter/$expr/$eq/1:", ["invalid MongoDB Extended JSON"]),
    # --- item 11: non-finite numbers and huge schema bounds ----------------------------------
    Case("filter-inf", {FILE: definition("trigger:\n  filter: {total: .inf}\n")},
         f"{FILE}:5: /trigger/filter/total:", ["infinity is not allowed here",
                                               "fix: write a finite number"]),
    Case("jitter-nan", {FILE: definition("policies:\n  retry: {jitter: .nan}\n")},
         f"{FILE}:5: /policies/retry/jitter:", ["NaN is not allowed here"]),
    Case("literal-nan", {FILE: definition("trigger:\n  filter: {$expr: {$eq: ['$total', "
                                          "{$literal: .nan}]}}\n")},
         f"{FILE}:5: /trigger/filter/$expr/$eq/1/$literal:", ["NaN is not allowed here"]),
    Case("schema-maximum-10e4000", {"schemas/order.schema.json": (
        '{"type": "object", "properties": {"total": {"type": "integer",\n"maximum": 1'
        + "0" * 4000 + "}}}\n"), FILE: definition()},
        "schemas/order.schema.json: /properties/total/maximum:", ["4001 digits"]),
    Case("schema-maximum-1e4000", {"schemas/order.schema.json": (
        '{"type": "object", "properties": {"total": {"type": "number",\n'
        '"maximum": 1e4000}}}\n'), FILE: definition()},
        "schemas/order.schema.json: /properties/total/maximum:", ["infinity is not allowed"]),
    # --- item 12: names use full-match semantics ---------------------------------------------
    Case("name-newline", {FILE: definition('name: "orders\\n"\n')}, f"{FILE}:4: /name:",
         ["'orders\\n' does not match the required form"]),
    Case("watch-newline", {FILE: definition('trigger:\n  watch: ["status\\n"]\n')},
         f"{FILE}:5: /trigger/watch/0:", ["does not match the required form"]),
    Case("duration-newline", {FILE: definition('policies:\n  timeout: "10s\\n"\n')},
         f"{FILE}:5: /policies/timeout:", ["invalid duration"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_definition_is_a_problem(case: Case, tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/order.schema.json": ORDER_SCHEMA, **case.files})
    started = time.monotonic()
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 1, result.text
    assert time.monotonic() - started < 5, "refusing must be quick"
    assert case.where in result.err, result.err
    for text in case.expect:
        assert text in result.err, result.err
    assert "Traceback" not in result.text
    assert snapshot(tmp_path / "app") == {}


def test_alias_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/order.schema.json": ORDER_SCHEMA,
                           FILE: alias_bomb() + definition()})
    tracemalloc.start()
    try:
        result = reactgen(tmp_path, "validate", "schemas")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.code == 1, result.text
    assert peak < 20 * 1024 * 1024, f"peak {peak} bytes"


def test_ref_outside_is_read_when_allowed(tmp_path: Path) -> None:
    write_files(tmp_path, {FILE: "collection: orders\nschema:\n  $ref: ../shared/o.json\n",
                           "shared/o.json": '{"type": "object", "properties": {"a": '
                                            '{"type": "string"}}}'})
    refused = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert refused.code == 1 and "outside the schemas folder" in refused.err
    allowed = reactgen(tmp_path, "build", "schemas", "--out", "app",
                       "--allow-ref-outside", "shared")
    assert allowed.code == 0, allowed.text


def run_python(project: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the project and the repository importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(project), str(REPO)]))
    return subprocess.run([sys.executable, "-c", code], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_boolean_subschema_watched_builds_and_imports(tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/order.schema.json": ORDER_SCHEMA,
                           FILE: definition("trigger:\n  watch: [rating]\n")})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    proc = run_python(tmp_path, "import app.registry, app.reactors.x as r\n"
                      "print(r.WATCH)")
    assert proc.returncode == 0, proc.stderr
    assert "'rating': '$rating'" in proc.stdout


def test_extended_json_nan_in_a_filter_is_emitted_safely(tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/order.schema.json": ORDER_SCHEMA,
                           FILE: definition("trigger:\n  filter: {total: {$ne: "
                                            "{$numberDouble: NaN}}}\n")})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    proc = run_python(tmp_path, "import math, app.reactors.x as r\n"
                      "assert math.isnan(r.FILTER['total']['$ne'])")
    assert proc.returncode == 0, proc.stderr


def test_format_email_model_imports_and_validates(tmp_path: Path) -> None:
    schema = {"title": "User", "type": "object",
              "properties": {"_id": {"type": "string"},
                             "email": {"type": "string", "format": "email"}}}
    write_files(tmp_path, {"schemas/user.schema.json": json.dumps(schema),
                           FILE: "collection: users\nschema:\n  $ref: user.schema.json\n"})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    proc = run_python(tmp_path, (
        "import pydantic\n"
        "from app.models.users import User\n"
        "assert User(_id='1', email='ada@example.com').email == 'ada@example.com'\n"
        "try:\n"
        "    User(_id='1', email='not an address')\n"
        "except pydantic.ValidationError:\n"
        "    print('refused')\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused"


def test_output_that_does_not_compile_is_a_problem(tmp_path: Path) -> None:
    problems = output_problems(tmp_path / "app", {
        "reactors/x.py": "FILTER = {'total': inf\n",
        "pipelines/x.json": '{"a": NaN}',
        "registry.py": "X = 1\n",
    })
    assert [(p.file.name, p.message.split(":")[0]) for p in problems] == [
        ("x.py", "generated code does not compile"), ("x.json", "generated file is invalid")]
    assert all(isinstance(p, Problem) and p.hint for p in problems)


@pytest.mark.parametrize(("pattern", "text", "matches"), [
    ("^[a-z]+$", "orders", True),
    ("^[a-z]+$", "orders\n", False),
    ("^[^$]+$", "a$", False),
    ("^[^$]+$", "ab", True),
    (r"^a\$$", "a$", True),
    ("^a$|^b$", "b\n", False),
])
def test_schema_patterns_use_ecma_end_anchors(pattern: str, text: str, matches: bool) -> None:
    assert (python_pattern(pattern).search(text) is not None) is matches


def test_new_refuses_a_name_ending_in_a_newline(tmp_path: Path) -> None:
    result = reactgen(tmp_path, "new", "orders\n", "--collection", "orders")
    assert result.code == 1, result.text
    assert "invalid reactor name" in result.err
