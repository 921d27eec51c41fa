"""Build behaviour: determinism, the warm path, ``check``, handler stubs and ``reactgen new``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from generator_support import (
    CORPUS,
    REPO,
    reactgen,
    reactgen_process,
    snapshot,
    write_files,
)

ORDER_SCHEMA = {
    "title": "Order",
    "type": "object",
    "properties": {"_id": {"type": "string"}, "status": {"type": "string"},
                   "total": {"type": "number"}},
    "required": ["_id", "status"],
}
DEFINITION = ("name: sync_orders\ncollection: orders\nschema:\n  $ref: order.schema.json\n"
              "trigger:\n  filter: {status: paid}\n  watch: [status, total]\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """One definition, built into ``app``."""
    write_files(tmp_path, {"schemas/order.schema.json": json.dumps(ORDER_SCHEMA, indent=2),
                           "schemas/sync_orders.reactor.yaml": DEFINITION})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    return tmp_path


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.is_file()}


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["shop", "weird_names", "extended_json_dates", "policies"])
def test_builds_in_two_folders_are_byte_identical(case: str, tmp_path: Path) -> None:
    """Separate processes with different hash seeds and no shared model cache."""
    outputs = []
    for folder, seed in (("one", "1"), ("two", "12345")):
        shutil.copytree(CORPUS / case, tmp_path / folder / "schemas")
        result = reactgen_process(tmp_path / folder, "build", "schemas", "--out", "app",
                                  env={"PYTHONHASHSEED": seed})
        assert result.code == 0, result.text
        outputs.append(snapshot(tmp_path / folder / "app"))
    assert outputs[0].keys() == outputs[1].keys()
    different = [rel for rel in outputs[0] if outputs[0][rel] != outputs[1][rel]]
    assert not different


def test_model_cache_does_not_change_the_output(tmp_path: Path, model_cache: Path) -> None:
    for folder in ("cold", "warm"):
        shutil.copytree(CORPUS / "shop", tmp_path / folder / "schemas")
    from generator.build import build

    build(tmp_path / "cold" / "schemas", tmp_path / "cold" / "app", tmp_path / "cold", None)
    build(tmp_path / "warm" / "schemas", tmp_path / "warm" / "app", tmp_path / "warm",
          model_cache)
    build(tmp_path / "warm" / "schemas", tmp_path / "warm" / "app", tmp_path / "warm",
          model_cache, force=True)
    assert snapshot(tmp_path / "cold" / "app") == snapshot(tmp_path / "warm" / "app")


def test_json_outputs_are_canonical_and_free_of_timestamps(tmp_path: Path) -> None:
    shutil.copytree(CORPUS / "shop", tmp_path / "schemas")
    assert reactgen(tmp_path, "build", "schemas", "--out", "app").code == 0
    files = snapshot(tmp_path / "app")
    for rel, data in files.items():
        text = data.decode()
        assert not re.search(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d", text), f"timestamp in {rel}"
        assert str(tmp_path) not in text, f"absolute path in {rel}"
        if rel.endswith(".json"):
            payload = json.loads(text)
            assert json.dumps(payload, indent=2, ensure_ascii=False) + "\n" == text, rel
            assert next(iter(payload)) == "_generated", rel
    manifest = json.loads(files["manifest.json"])
    assert list(manifest["reactors"]) == sorted(manifest["reactors"])
    assert list(manifest["outputs"]) == sorted(manifest["outputs"])


# --- warm path and check ----------------------------------------------------------------------


def test_second_build_is_up_to_date_and_writes_nothing(project: Path) -> None:
    before, times = snapshot(project), mtimes(project)
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 0
    assert "app is up to date" in result.out
    assert snapshot(project) == before
    assert mtimes(project) == times


def test_forced_rebuild_rewrites_no_unchanged_file(project: Path) -> None:
    times = mtimes(project)
    result = reactgen(project, "build", "schemas", "--out", "app", "--force")
    assert result.code == 0
    assert "(0 file(s) changed" in result.out
    assert mtimes(project) == times


def test_check_passes_right_after_build(project: Path) -> None:
    result = reactgen(project, "check", "schemas", "--out", "app")
    assert result.code == 0, result.text
    assert "up to date" in result.out


def test_check_fails_after_editing_a_definition(project: Path) -> None:
    definition = project / "schemas" / "sync_orders.reactor.yaml"
    definition.write_text(DEFINITION.replace("status: paid", "status: shipped"))
    result = reactgen(project, "check", "schemas", "--out", "app")
    assert result.code == 3, result.text
    assert "outdated: app/reactors/sync_orders.py" in result.err
    assert "run `reactgen build schemas`" in result.err
    rebuilt = reactgen(project, "build", "schemas", "--out", "app")
    assert rebuilt.code == 0 and "wrote app/reactors/sync_orders.py" in rebuilt.out
    assert reactgen(project, "check", "schemas", "--out", "app").code == 0


def test_check_fails_after_editing_a_referenced_schema(project: Path) -> None:
    schema = dict(ORDER_SCHEMA, properties={**ORDER_SCHEMA["properties"],
                                            "note": {"type": "string"}})
    (project / "schemas" / "order.schema.json").write_text(json.dumps(schema))
    result = reactgen(project, "check", "schemas", "--out", "app")
    assert result.code == 3
    assert "outdated: app/models/orders.py" in result.err
    warm = reactgen(project, "build", "schemas", "--out", "app")
    assert "up to date" not in warm.out and "wrote app/models/orders.py" in warm.out


@pytest.mark.parametrize("rel", ["reactors/sync_orders.py", "pipelines/sync_orders.json",
                                 "registry.py", "manifest.json"])
def test_check_fails_after_editing_a_generated_file(project: Path, rel: str) -> None:
    target = project / "app" / rel
    target.write_text(target.read_text() + "\n")
    result = reactgen(project, "check", "schemas", "--out", "app")
    assert result.code == 3
    assert f"outdated: app/{rel}" in result.err
    rebuilt = reactgen(project, "build", "schemas", "--out", "app")
    assert "up to date" not in rebuilt.out, "an edited output must defeat the warm path"
    assert reactgen(project, "check", "schemas", "--out", "app").code == 0


def test_check_fails_for_a_deleted_generated_file_and_a_deleted_stub(project: Path) -> None:
    (project / "app" / "models" / "orders.py").unlink()
    (project / "app" / "handlers" / "sync_orders.py").unlink()
    result = reactgen(project, "check", "schemas", "--out", "app")
    assert result.code == 3
    assert "missing: app/models/orders.py" in result.err
    assert "missing handler stub: app/handlers/sync_orders.py" in result.err
    assert reactgen(project, "build", "schemas", "--out", "app").code == 0
    assert (project / "app" / "handlers" / "sync_orders.py").is_file()
    assert reactgen(project, "check", "schemas", "--out", "app").code == 0


def test_outputs_of_a_removed_definition_are_deleted_but_its_stub_is_kept(project: Path) -> None:
    write_files(project, {"schemas/second.reactor.yaml": (
        "collection: orders\nschema: {$ref: order.schema.json}\n")})
    assert reactgen(project, "build", "schemas", "--out", "app").code == 0
    (project / "app" / "handlers" / "second.py").write_text("# mine\n")
    (project / "schemas" / "second.reactor.yaml").unlink()
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 0
    assert not (project / "app" / "reactors" / "second.py").exists()
    assert not (project / "app" / "pipelines" / "second.json").exists()
    assert (project / "app" / "handlers" / "second.py").read_text() == "# mine\n"
    assert "app/handlers/second.py: no reactor named like this module any more" in result.err
    assert reactgen(project, "check", "schemas", "--out", "app").code == 0


def test_committed_generated_package_is_up_to_date() -> None:
    result = reactgen_process(REPO, "check", "schemas/")
    assert result.code == 0, result.text


# --- handler stubs --------------------------------------------------------------------------


def test_edited_stub_survives_rebuilds(project: Path) -> None:
    stub = project / "app" / "handlers" / "sync_orders.py"
    edited = stub.read_text().replace('ctx.logger.info("handled %r", document)',
                                      'ctx.logger.info("pushed %s", document.status)')
    stub.write_text(edited)
    assert reactgen(project, "build", "schemas", "--out", "app", "--force").code == 0
    assert stub.read_text() == edited
    (project / "schemas" / "sync_orders.reactor.yaml").write_text(
        DEFINITION.replace("[status, total]", "[status]"))
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 0 and "wrote app/reactors/sync_orders.py" in result.out
    assert stub.read_text() == edited
    assert "warning" not in result.err


def test_stub_made_wrong_by_a_model_rename_is_reported(project: Path) -> None:
    stub = project / "app" / "handlers" / "sync_orders.py"
    stub.write_text(
        '"""Mine."""\n\nfrom __future__ import annotations\n\n'
        "from app.models.orders import Order\n"
        "from app.reactors.sync_orders import Context, Order as Doc\n\n\n"
        "async def handle(ctx: Context) -> None:\n"
        "    document: Order = await ctx.get_document()\n"
        "    other: Doc = document\n"
        '    ctx.logger.info("%s", other.status)\n')
    (project / "schemas" / "sync_orders.reactor.yaml").write_text(
        DEFINITION.replace("collection: orders\n", "collection: orders\nmodel: Purchase\n"))
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    assert ("reactgen: warning: app/handlers/sync_orders.py:5: imports 'Order' from "
            "app.models.orders, which no longer defines it; the document model is now "
            "'Purchase': import that instead") in result.err
    assert ("reactgen: warning: app/handlers/sync_orders.py:6: imports 'Order' from "
            "app.reactors.sync_orders, which no longer defines it; if it meant the document "
            "model, import 'Purchase' instead") in result.err
    assert "Order" in stub.read_text(), "the stub itself is never rewritten"


def test_stub_without_handle_is_reported(project: Path) -> None:
    (project / "app" / "handlers" / "sync_orders.py").write_text("def run(ctx):\n    pass\n")
    result = reactgen(project, "build", "schemas", "--out", "app", "--force")
    assert result.code == 0
    assert "app/handlers/sync_orders.py: defines no function 'handle(ctx)'" in result.err


# --- reactgen new -----------------------------------------------------------------------------


def test_new_scaffolds_a_definition_that_builds(tmp_path: Path) -> None:
    result = reactgen(tmp_path, "new", "order_shipped", "--collection", "orders",
                      "--dir", "schemas")
    assert result.code == 0, result.text
    definition = tmp_path / "schemas" / "order_shipped.reactor.yaml"
    schema = tmp_path / "schemas" / "orders.schema.json"
    assert f"created {Path('schemas/order_shipped.reactor.yaml')}" in result.out
    assert definition.is_file() and schema.is_file()
    assert reactgen(tmp_path, "validate", "schemas").code == 0
    build = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert build.code == 0, build.text
    assert (tmp_path / "app" / "handlers" / "order_shipped.py").is_file()
    second = reactgen(tmp_path, "new", "order_paid", "--collection", "orders",
                      "--dir", "schemas")
    assert second.code == 0
    assert "orders.schema.json" not in second.out, "an existing schema is reused"
    assert reactgen(tmp_path, "build", "schemas", "--out", "app").code == 0


def test_new_refuses_to_overwrite(tmp_path: Path) -> None:
    assert reactgen(tmp_path, "new", "sync", "--collection", "orders", "--dir", "s").code == 0
    definition = tmp_path / "s" / "sync.reactor.yaml"
    definition.write_text(definition.read_text() + "# edited\n")
    before = snapshot(tmp_path)
    result = reactgen(tmp_path, "new", "sync", "--collection", "users", "--dir", "s")
    assert result.code == 1
    assert "sync.reactor.yaml: /: already exists; not overwriting it" in result.err
    assert "fix: pick another name or edit the existing file" in result.err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("name", "collection", "message"), [
    ("1st", "orders", "invalid reactor name '1st'"),
    ("a b", "orders", "invalid reactor name 'a b'"),
    ("sync", "ord$ers", "invalid collection name 'ord$ers'"),
])
def test_new_rejects_invalid_names(tmp_path: Path, name: str, collection: str,
                                   message: str) -> None:
    result = reactgen(tmp_path, "new", name, "--collection", collection, "--dir", "schemas")
    assert result.code == 1
    assert message in result.err and "fix:" in result.err
    assert not (tmp_path / "schemas").exists()


def test_new_with_unusual_collection_name_builds(tmp_path: Path) -> None:
    result = reactgen(tmp_path, "new", "audit.v2", "--collection", "Übersicht-log.2024",
                      "--dir", "schemas")
    assert result.code == 0, result.text
    build = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert build.code == 0, build.text
