"""The generated package type-checks (``mypy --strict``) and lints (``ruff check``), and the
types are precise enough that a handler reading a field the document model lacks fails mypy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from generator_support import CORPUS, run_mypy, run_ruff

from generator.build import build

LINT_CASES = ["weird_names", "colliding_sanitised", "extended_json_dates", "projection_watch",
              "policies", "yaml_and_json", "now_filter", "empty_watch", "time_triggers",
              "flow_control"]


def build_case(case: str, project: Path, cache: Path, package: str = "app") -> Path:
    shutil.copytree(CORPUS / case, project / "schemas")
    out = project / package
    build(project / "schemas", out, project, cache)
    return out


@pytest.mark.parametrize("case", LINT_CASES)
def test_generated_code_passes_ruff(case: str, tmp_path: Path, model_cache: Path) -> None:
    build_case(case, tmp_path, model_cache)
    result = run_ruff(tmp_path, "app")
    assert result.code == 0, result.text


def test_generated_code_passes_ruff_when_the_package_sorts_after_runtime(
        tmp_path: Path, model_cache: Path) -> None:
    """Import blocks are sorted for any package name, not only for ones before 'runtime'."""
    build_case("shop", tmp_path, model_cache, package="zz_shop_app")
    result = run_ruff(tmp_path, "zz_shop_app")
    assert result.code == 0, result.text


def test_generated_code_passes_mypy_strict(tmp_path: Path, model_cache: Path,
                                           mypy_cache: Path) -> None:
    """Several corpus cases side by side, each its own package, checked in one mypy run."""
    packages = []
    for case in ["shop", *LINT_CASES]:
        package = f"app_{case}"
        project = tmp_path / case
        build_case(case, project, model_cache, package=package)
        shutil.move(project / package, tmp_path / package)
        packages.append(package)
    result = run_mypy(tmp_path, *packages, cache_dir=mypy_cache)
    assert result.code == 0, result.text


HANDLER = '''"""A handler written by the application developer."""

from __future__ import annotations

from app.reactors.sync_paid_orders import Context


async def handle(ctx: Context) -> None:
    document = await ctx.get_document()
    ctx.logger.info("%s", document.{field})
    ctx.logger.info("%s", ctx.watched_values.{watched})
'''


@pytest.fixture
def shop(tmp_path: Path, model_cache: Path) -> Path:
    build_case("shop", tmp_path, model_cache)
    return tmp_path


def test_handler_reading_a_missing_field_fails_mypy(shop: Path, mypy_cache: Path) -> None:
    handler = shop / "app" / "handlers" / "sync_paid_orders.py"
    handler.write_text(HANDLER.format(field="no_such_field", watched="status"))
    result = run_mypy(shop, "app", cache_dir=mypy_cache)
    assert result.code != 0, result.text
    assert "no_such_field" in result.out
    assert 'has no attribute "no_such_field"' in result.out
    assert "app/handlers/sync_paid_orders.py:10" in result.out


def test_handler_reading_a_missing_watched_value_fails_mypy(shop: Path,
                                                             mypy_cache: Path) -> None:
    handler = shop / "app" / "handlers" / "sync_paid_orders.py"
    handler.write_text(HANDLER.format(field="status", watched="currency"))
    result = run_mypy(shop, "app", cache_dir=mypy_cache)
    assert result.code != 0, result.text
    assert 'has no attribute "currency"' in result.out


def test_handler_reading_existing_fields_passes_mypy(shop: Path, mypy_cache: Path) -> None:
    handler = shop / "app" / "handlers" / "sync_paid_orders.py"
    handler.write_text(HANDLER.format(field="total", watched="items_sku"))
    result = run_mypy(shop, "app", cache_dir=mypy_cache)
    assert result.code == 0, result.text


def test_stub_importing_a_renamed_model_fails_mypy(shop: Path, mypy_cache: Path,
                                                   model_cache: Path) -> None:
    handler = shop / "app" / "handlers" / "sync_paid_orders.py"
    handler.write_text(
        '"""Mine."""\n\nfrom __future__ import annotations\n\n'
        "from app.reactors.sync_paid_orders import Context, Order\n\n\n"
        "async def handle(ctx: Context) -> None:\n"
        "    document: Order = await ctx.get_document()\n"
        '    ctx.logger.info("%s", document.status)\n')
    assert run_mypy(shop, "app", cache_dir=mypy_cache).code == 0
    definition = shop / "schemas" / "sync_paid_orders.reactor.yaml"
    definition.write_text(definition.read_text().replace("collection: orders\n",
                                                         "collection: orders\nmodel: Purchase\n"))
    # The other reactors keep their models; the orders model is renamed for this reactor only
    # when every reactor on the collection agrees, which is the case here (one reactor).
    build(shop / "schemas", shop / "app", shop, model_cache)
    result = run_mypy(shop, "app", cache_dir=mypy_cache)
    assert result.code != 0
    assert 'Module "app.reactors.sync_paid_orders" has no attribute "Order"' in result.out


ENUM_HANDLER = '''"""A handler comparing a watched enum value."""

from __future__ import annotations

from app.models.orders import Status
from app.reactors.sync_paid_orders import Context


async def handle(ctx: Context) -> None:
    document = await ctx.get_document()
    if ctx.watched_values.status == document.status == Status.paid:
        ctx.logger.info("paid")
    reveal_type(ctx.watched_values.status)
'''


def test_watched_enum_values_keep_their_values_in_the_type(shop: Path,
                                                            mypy_cache: Path) -> None:
    """A watched field with an ``enum`` is typed with its values (not plain ``str``), and
    compares with the model's ``StrEnum`` member."""
    handler = shop / "app" / "handlers" / "sync_paid_orders.py"
    handler.write_text(ENUM_HANDLER)
    result = run_mypy(shop, "app", cache_dir=mypy_cache)
    assert ("Revealed type is \"Literal['new'] | Literal['paid'] | Literal['shipped'] | "
            "Literal['cancelled'] | None\"") in result.out, result.text
    assert "error" not in result.out.replace("note:", ""), result.text


DOC_ID_HANDLER = '''"""A handler revealing the types of its context."""

from __future__ import annotations

from app.reactors.sync_paid_orders import Context


async def handle(ctx: Context) -> None:
    reveal_type(ctx.doc_id)
    reveal_type(await ctx.get_document())
    partial = await ctx.get_document(projection={"status": 1})
    reveal_type(partial)
    reveal_type(ctx.get_document_sync(projection={"status": 1}))
    ctx.logger.info("%s", partial.status)
'''


def test_doc_id_and_projected_documents_are_typed(shop: Path, mypy_cache: Path) -> None:
    """A string ``_id`` types ``ctx.doc_id`` as ``str``; ``get_document()`` is the model and
    ``get_document(projection=...)`` a plain dict (so reading it as the model fails mypy)."""
    handler = shop / "app" / "handlers" / "sync_paid_orders.py"
    handler.write_text(DOC_ID_HANDLER)
    result = run_mypy(shop, "app", cache_dir=mypy_cache)
    revealed = [line.split("Revealed type is ", 1)[1] for line in result.out.splitlines()
                if "Revealed type is" in line]
    assert revealed == ['"str"', '"app.models.orders.Order"', '"dict[str, Any]"',
                        '"dict[str, Any]"'], result.text
    assert 'app/handlers/sync_paid_orders.py:14: error: "dict[str, Any]" has no attribute ' \
        '"status"' in result.out, result.text


ID_DEFINITION = """\
collection: things
schema:
  title: Thing
  type: object
  properties:
{id_line}    n: {{type: integer}}
trigger:
  watch: [n]
"""

ID_HANDLER = '''"""Reveals the id type."""

from __future__ import annotations

from app.reactors.thing import Context


async def handle(ctx: Context) -> None:
    reveal_type(ctx.doc_id)
'''


@pytest.mark.parametrize(("id_schema", "expected"), [
    ("{type: integer}", "int"),
    ("{bsonType: objectId}", "bson.objectid.ObjectId"),
    ("{type: string, bsonType: objectId}", "bson.objectid.ObjectId"),
    ("{type: [string, integer]}", "str | int"),
    (None, "Any"),
    ("{type: object}", "Any"),
])
def test_the_doc_id_type_follows_the_schema(id_schema: str | None, expected: str,
                                            tmp_path: Path, model_cache: Path,
                                            mypy_cache: Path) -> None:
    """``ctx.doc_id``'s type is the declared ``_id`` type; an ``_id`` marked ``bsonType:
    objectId`` is a ``bson.ObjectId``; without a (simple) declaration it stays ``Any``."""
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    id_line = f"    _id: {id_schema}\n" if id_schema else ""
    (schemas / "thing.reactor.yaml").write_text(ID_DEFINITION.format(id_line=id_line))
    out = tmp_path / "app"
    build(schemas, out, tmp_path, model_cache)
    (out / "handlers" / "thing.py").write_text(ID_HANDLER)
    result = run_mypy(tmp_path, "app", cache_dir=mypy_cache)
    assert f'Revealed type is "{expected}"' in result.out, result.text
    assert "error" not in result.out.replace("note:", ""), result.text
