"""Path safety of ``reactgen build`` (issue 10, item 12): a forged ``manifest.json`` cannot make
a build delete anything it did not write, and symbolic links in the output folder are refused
instead of followed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generator_support import reactgen, snapshot, write_files

from generator.output_safety import content_digest, is_output_path

DEFINITION = ("collection: orders\nschema:\n  $ref: order.schema.json\n"
              "trigger:\n  filter: {status: paid}\n  watch: [status]\n")
SCHEMA = json.dumps({"title": "Order", "type": "object",
                     "properties": {"_id": {"type": "string"}, "status": {"type": "string"}}})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with one definition (not built yet)."""
    write_files(tmp_path / "project", {"schemas/order.schema.json": SCHEMA,
                                       "schemas/sync.reactor.yaml": DEFINITION})
    return tmp_path / "project"


def forge_manifest(app: Path, outputs: dict[str, str]) -> None:
    """Add ``outputs`` to the manifest, as a malicious pull request could."""
    manifest = json.loads((app / "manifest.json").read_text(encoding="utf-8"))
    manifest["outputs"].update(outputs)
    (app / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_forged_manifest_entries_are_never_deleted(project: Path, tmp_path: Path) -> None:
    assert reactgen(project, "build", "schemas", "--out", "app").code == 0
    app = project / "app"
    victims = {"outside": tmp_path / "victim.txt", "sibling": project / "schemas" / "keep.py"}
    for victim in victims.values():
        victim.write_text("precious", encoding="utf-8")
    (app / "reactors" / "edited.py").write_text("mine", encoding="utf-8")
    (app / "notes.txt").write_text("mine", encoding="utf-8")
    forge_manifest(app, {
        "../../victim.txt": content_digest("precious"),
        str(victims["outside"]): content_digest("precious"),
        "../schemas/keep.py": content_digest("precious"),
        "reactors/edited.py": content_digest("what the generator wrote"),
        "notes.txt": content_digest("mine"),
    })
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    assert all(v.read_text(encoding="utf-8") == "precious" for v in victims.values())
    assert (app / "reactors" / "edited.py").read_text(encoding="utf-8") == "mine"
    assert (app / "notes.txt").exists()
    assert "ignoring the output entry '../../victim.txt'" in result.err
    assert f"ignoring the output entry {str(victims['outside'])!r}" in result.err
    assert "app/reactors/edited.py: no longer generated, but kept because it changed" in (
        result.err)


def test_unchanged_outputs_of_a_removed_definition_are_still_deleted(project: Path) -> None:
    assert reactgen(project, "build", "schemas", "--out", "app").code == 0
    (project / "schemas" / "sync.reactor.yaml").rename(project / "schemas" / "other.reactor.yaml")
    result = reactgen(project, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    assert "  removed app/reactors/sync.py\n" in result.out
    assert "(removed)" not in result.out and "wrote app/reactors/sync.py" not in result.out
    assert not (project / "app" / "reactors" / "sync.py").exists()


@pytest.mark.parametrize("where", ["folder", "subfolder", "file"])
def test_symlinks_in_the_output_folder_are_refused(project: Path, tmp_path: Path,
                                                   where: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if where == "folder":
        (project / "app").symlink_to(elsewhere, target_is_directory=True)
        link = "app"
    else:
        assert reactgen(project, "build", "schemas", "--out", "app").code == 0
        if where == "subfolder":
            target = project / "app" / "reactors"
            for item in target.iterdir():
                item.unlink()
            target.rmdir()
            target.symlink_to(elsewhere, target_is_directory=True)
            link = "app/reactors"
        else:
            (elsewhere / "registry.py").write_text("theirs", encoding="utf-8")
            (project / "app" / "registry.py").unlink()
            (project / "app" / "registry.py").symlink_to(elsewhere / "registry.py")
            link = "app/registry.py"
    before = snapshot(elsewhere)
    result = reactgen(project, "build", "schemas", "--out", "app", "--force")
    assert result.code == 1, result.text
    assert f"{link}: /: is a symbolic link" in result.err, result.err
    assert "fix: replace the link with a real folder or file" in result.err
    assert snapshot(elsewhere) == before


@pytest.mark.parametrize(("rel", "safe"), [
    ("reactors/sync.py", True), ("indexes/setup_indexes.mongosh.js", True),
    ("manifest.json", True), ("../x.py", False), ("/etc/passwd", False),
    ("reactors/../../x.py", False), ("handlers/sync.py", False), ("reactors/x.py\n", False),
    ("notes.txt", False), (5, False),
])
def test_only_generator_made_names_count_as_outputs(rel: object, safe: bool) -> None:
    assert is_output_path(rel) is safe
