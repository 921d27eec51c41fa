"""The first hour of a new user (issue 11): typos in trigger paths and values, a missing
folder, YAML lines, unknown operators, handler syntax errors and the scaffold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generator_support import REPO, reactgen, snapshot, write_files

from generator.scaffold import definition_format_reference, model_title, singular

# A closed document schema (additionalProperties: false at the top, in $defs and in items)
# with an open sub-object (customer).
CLOSED_SCHEMA = json.dumps({
    "title": "Invoice",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "_id": {"type": "string"},
        "status": {"type": "string", "enum": ["draft", "overdue", "paid"]},
        "amount": {"type": "integer"},
        "customer": {"type": "object", "properties": {"email": {"type": "string"}}},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
        "address": {"$ref": "#/$defs/address"},
    },
    "$defs": {
        "line": {"type": "object", "additionalProperties": False,
                 "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}},
        "address": {"type": "object", "additionalProperties": False,
                    "properties": {"city": {"type": "string"}}},
    },
}, indent=2)
OPEN_SCHEMA = json.dumps({
    "title": "Invoice",
    "type": "object",
    "properties": {
        "_id": {"type": "string"},
        "status": {"type": "string", "enum": ["draft", "overdue", "paid"]},
        "amount": {"type": "integer"},
        "customer": {"type": "object", "properties": {"email": {"type": "string"}}},
    },
}, indent=2)


def project_with(tmp_path: Path, trigger: str, schema: str = CLOSED_SCHEMA) -> Path:
    """A project whose one definition has the given ``trigger:`` body (lines 5 and after)."""
    write_files(tmp_path, {
        "schemas/invoice.schema.json": schema,
        "schemas/remind.reactor.yaml": (
            "collection: invoices\n"
            "schema:\n"
            "  $ref: invoice.schema.json\n"
            "trigger:\n" + trigger),
    })
    return tmp_path


# --- typos in paths and values: errors where the schema rules them out ------------------------

@pytest.mark.parametrize(("trigger", "where", "message", "fix"), [
    ("  filter: {statsu: overdue}\n", "remind.reactor.yaml:5: /trigger/filter/statsu:",
     "the filter reads 'statsu', but the document schema (invoice.schema.json) declares no "
     "field 'statsu' and allows no other (additionalProperties: false)",
     "fix: did you mean 'status'? read a field the schema declares"),
    ("  watch: [status, amout]\n", "remind.reactor.yaml:5: /trigger/watch/1:",
     "the watch reads 'amout'", "fix: did you mean 'amount'?"),
    ("  watch:\n    - status\n    - address.ciyt\n", "remind.reactor.yaml:7: /trigger/watch/1:",
     "declares no field 'ciyt' in 'address' and allows no other",
     "fix: did you mean 'address.city'?"),
    ("  filter: {lines.skuu: A-1}\n", "remind.reactor.yaml:5: /trigger/filter/lines.skuu:",
     "declares no field 'skuu' in 'lines'", "fix: did you mean 'lines.sku'?"),
    ("  filter: {lines: {$elemMatch: {qtty: {$gt: 1}}}}\n",
     "/trigger/filter/lines/$elemMatch/qtty:", "the filter reads 'lines.qtty'",
     "did you mean 'lines.qty'?"),
    ("  filter: {$expr: {$gt: ['$amout', 100]}}\n", "/trigger/filter/$expr/$gt/0:",
     "the filter reads '$amout'", "fix: did you mean '$amount'?"),
    ("  filter: {$lt: ['$amount', '$totl']}\n", "/trigger/filter/$lt/1:",
     "the filter reads '$totl'", "fix: read a field the schema declares"),
    ("  watch: {count: {$size: '$linez'}}\n", "/trigger/watch/count/$size:",
     "the watch reads '$linez'", "fix: did you mean '$lines'?"),
    ("  filter: {amount.cents: 1}\n", "/trigger/filter/amount.cents:",
     "'amount' is declared as integer in the document schema",
     "fix: read a field the schema declares"),
    # values outside the enum (also inside $or / $in), and of the wrong type
    ("  filter: {status: overdew}\n", "remind.reactor.yaml:5: /trigger/filter/status:",
     "the filter compares 'status' with \"overdew\", which the document schema "
     "(invoice.schema.json) rules out, so the reactor would never fire",
     "fix: did you mean 'overdue'? one of: \"draft\", \"overdue\", \"paid\""),
    ("  filter:\n    $or:\n      - {amount: {$gt: 5}}\n      - {status: {$in: [paid, drafts]}}\n",
     "remind.reactor.yaml:8: /trigger/filter/$or/1/status/$in/1:",
     "compares 'status' with \"drafts\"", "fix: did you mean 'draft'?"),
    ("  filter: {status: {$ne: Paid}}\n", "/trigger/filter/status/$ne:",
     "compares 'status' with \"Paid\"", "did you mean 'paid'?"),
    ("  filter: {amount: '100'}\n", "remind.reactor.yaml:5: /trigger/filter/amount:",
     "the filter compares 'amount', an integer in the document schema (invoice.schema.json), "
     "with the string \"100\", so the reactor would never fire",
     "fix: write the number without quotes"),
    ("  filter: {lines.qty: {$in: [1, two]}}\n", "/trigger/filter/lines.qty/$in/1:",
     "compares 'lines.qty', an integer", "fix: compare it with an integer"),
])
@pytest.mark.parametrize("command", ["validate", "build", "check"])
def test_paths_and_values_the_schema_rules_out_are_errors(
        tmp_path: Path, model_cache: Path, command: str, trigger: str, where: str,
        message: str, fix: str) -> None:
    project = project_with(tmp_path, trigger)
    before = snapshot(project)
    args = ("schemas",) if command == "validate" else ("schemas", "--out", "app")
    result = reactgen(project, command, *args)
    assert result.code == 1, result.text
    assert "nothing was written" in result.err
    assert where in result.err, result.err
    assert message in result.err, result.err
    assert fix in result.err, result.err
    assert snapshot(project) == before


@pytest.mark.parametrize("trigger", [
    "  filter: {status: overdue, amount: {$gte: 10}, customer.email: {$exists: true}}\n"
    "  watch: [status, amount, lines.qty, address.city, _id]\n",
    "  filter: {status: null, lines: {$elemMatch: {sku: A, qty: {$gt: 1}}}}\n",
    "  filter: {status: {$in: [draft, paid]}, amount: {$type: int}}\n",
    "  filter: {$and: [{$lt: ['$amount', 10]}, {$eq: ['$status', paid]}]}\n",
    "  watch: {n: {$size: {$ifNull: ['$lines', []]}}, status: 1}\n",
])
def test_declared_paths_and_allowed_values_pass_without_warnings(tmp_path: Path,
                                                                   trigger: str) -> None:
    project = project_with(tmp_path, trigger)
    result = reactgen(project, "validate", "schemas")
    assert result.code == 0, result.text
    assert "warning" not in result.err


# --- paths an open schema allows but does not declare: warnings --------------------------------

@pytest.mark.parametrize("command", ["validate", "build", "check"])
def test_undeclared_paths_of_an_open_schema_are_warnings(tmp_path: Path, model_cache: Path,
                                                          command: str) -> None:
    project = project_with(tmp_path, "  filter: {status: overdue}\n"
                           "  watch: [status, amout, customer.emial]\n", OPEN_SCHEMA)
    if command == "check":
        assert reactgen(project, "build", "schemas", "--out", "app").code == 0
    args = ("schemas",) if command == "validate" else ("schemas", "--out", "app")
    result = reactgen(project, command, *args)
    assert result.code == 0, result.text
    assert (
        "reactgen: warning: schemas/remind.reactor.yaml:6: /trigger/watch/1: the watch reads "
        "'amout', which the document schema (invoice.schema.json) does not declare (it allows "
        "other fields, so this is only a warning)\n"
        "      fix: did you mean 'amount'? declare the field in the schema, or set "
        "additionalProperties: false to make undeclared paths errors (fields there: _id, "
        "amount, customer, status)\n") in result.err, result.err
    assert ("reactgen: warning: schemas/remind.reactor.yaml:6: /trigger/watch/2: the watch "
            "reads 'customer.emial', which the document schema (invoice.schema.json) does not "
            "declare in 'customer'") in result.err
    assert "did you mean 'customer.email'?" in result.err


def test_a_value_outside_the_enum_of_an_open_schema_is_still_an_error(tmp_path: Path) -> None:
    project = project_with(tmp_path, "  filter: {status: overdew}\n", OPEN_SCHEMA)
    result = reactgen(project, "validate", "schemas")
    assert result.code == 1
    assert "did you mean 'overdue'?" in result.err


# --- operators, YAML lines, missing folders ----------------------------------------------------

@pytest.mark.parametrize(("trigger", "where", "fix"), [
    ("  filter: {status: {$eqq: paid}}\n", "/trigger/filter/status/$eqq: unknown query "
     "operator $eqq", "fix: did you mean '$eq'?"),
    ("  filter: {$ore: [{status: paid}]}\n", "/trigger/filter/$ore: unknown expression operator",
     "fix: did you mean '$or'?"),
    ("  filter: {$expr: {$gtt: ['$amount', 1]}}\n", "/$expr/$gtt: unknown expression operator",
     "fix: did you mean '$gt'?"),
])
def test_unknown_operators_get_a_did_you_mean(tmp_path: Path, trigger: str, where: str,
                                              fix: str) -> None:
    result = reactgen(project_with(tmp_path, trigger), "validate", "schemas")
    assert result.code == 1
    assert where in result.err and fix in result.err, result.err


@pytest.mark.parametrize(("line7", "noticed"), [
    ("  foo bar\n  baz: 1\n", "(column 3; noticed on line 8)"),  # a key without ':'
    ("  watch: [status\n  baz: 1\n", "; noticed on line 8)"),  # an unclosed bracket
    ("  watch: \"status\n  baz: 1\n", "; noticed on line 9)"),  # an unclosed quote
])
def test_a_yaml_error_is_reported_on_the_line_where_it_is(tmp_path: Path, line7: str,
                                                          noticed: str) -> None:
    project = project_with(tmp_path, "  filter: {}\n  watch: [status]\n" + line7)
    assert (project / "schemas/remind.reactor.yaml").read_text().splitlines()[6] == (
        line7.splitlines()[0])
    result = reactgen(project, "validate", "schemas")
    assert result.code == 1
    assert "schemas/remind.reactor.yaml:7: /: invalid YAML: " in result.err, result.err
    assert noticed in result.err


def test_a_yaml_error_found_where_it_is_keeps_its_line(tmp_path: Path) -> None:
    project = project_with(tmp_path, "  filter: {}\n  watch:\n    - a\n   - b\n")
    result = reactgen(project, "validate", "schemas")
    assert "schemas/remind.reactor.yaml:8: /: invalid YAML:" in result.err, result.err


@pytest.mark.parametrize("command", ["validate", "build", "check"])
@pytest.mark.parametrize(("given", "kind"), [("missing/", "folder"), ("x.reactor.yaml", "file")])
def test_a_missing_definitions_folder_is_named(tmp_path: Path, command: str, given: str,
                                               kind: str) -> None:
    result = reactgen(tmp_path, command, given)
    assert result.code == 2, result.text
    assert result.err.startswith(f"reactgen: no such {kind}: {given}\n"), result.err
    assert "no reactor definitions found" not in result.err
    assert not (tmp_path / "generated").exists()


# --- handler modules that do not compile -------------------------------------------------------

@pytest.mark.parametrize("command", ["build", "check"])
def test_a_handler_with_a_syntax_error_is_a_problem(tmp_path: Path, model_cache: Path,
                                                    command: str) -> None:
    project = project_with(tmp_path, "  watch: [status]\n")
    assert reactgen(project, "build", "schemas", "--out", "app").code == 0
    handler = project / "app" / "handlers" / "remind.py"
    handler.write_text(handler.read_text() + "\n\ndef broken(:\n    pass\n")
    broken_line = handler.read_text().splitlines().index("def broken(:") + 1
    before = snapshot(project)
    result = reactgen(project, command, "schemas", "--out", "app")
    assert result.code == 1, result.text
    assert (f"  app/handlers/remind.py:{broken_line}: handler module does not compile: "
            "invalid syntax (column 12)\n"
            "      fix: fix the Python syntax on that line") in result.err, result.err
    assert snapshot(project) == before
    handler.write_text(handler.read_text().replace("def broken(:", "def broken():"))
    assert reactgen(project, command, "schemas", "--out", "app").code == 0


# --- the scaffold --------------------------------------------------------------------------------

@pytest.mark.parametrize(("plural", "one"), [
    ("invoices", "invoice"), ("categories", "category"), ("addresses", "address"),
    ("boxes", "box"), ("branches", "branch"), ("people", "person"), ("status", "status"),
    ("analysis", "analysis"), ("news", "news"), ("users", "user"), ("Orders", "Order"),
])
def test_singular(plural: str, one: str) -> None:
    assert singular(plural) == one


def test_model_title_is_singular_camel_case() -> None:
    assert model_title("invoices") == "Invoice"
    assert model_title("order_items") == "OrderItem"
    assert model_title("log.2024") == "Log2024"


def test_new_scaffold_names_a_singular_model_and_references_the_format(
        tmp_path: Path, model_cache: Path) -> None:
    result = reactgen(tmp_path, "new", "remind", "--collection", "invoices")
    assert result.code == 0, result.text
    schema = json.loads((tmp_path / "schemas" / "invoices.schema.json").read_text())
    assert schema["title"] == "Invoice"
    text = (tmp_path / "schemas" / "remind.reactor.yaml").read_text()
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=file://"), first
    shipped = Path(first.split("$schema=file://", 1)[1])
    assert shipped.name == "reactor-definition.schema.json" and shipped.is_file()
    assert json.loads(shipped.read_text())["$schema"].startswith("https://json-schema.org/")
    assert "  $ref: \"invoices.schema.json\"\n" in text
    build = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert build.code == 0, build.text
    assert "class Invoice(" in (tmp_path / "app" / "models" / "invoices.py").read_text()


def test_the_format_is_referenced_relatively_from_inside_the_packages_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When the package lives below the project (a project's own .venv, or this repository),
    the reference is relative, so it works on every machine of the team."""
    monkeypatch.chdir(REPO)
    assert definition_format_reference(REPO / "schemas") == (
        "../generator/reactor-definition.schema.json")
