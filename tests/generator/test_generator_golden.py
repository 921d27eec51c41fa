"""Golden-file tests: every corpus case builds to exactly the committed expected output.

A case whose definitions are invalid has an ``errors.txt`` golden (the problems as the CLI
prints them) instead of a package. Refresh with ``REACTGEN_REFRESH_GOLDEN=1`` or
``--refresh-golden`` (see conftest.py).
"""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path

import pytest
from generator_support import CORPUS, GOLDEN, snapshot

from generator.build import build
from generator.errors import BuildError

CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith("."))
GENERATOR_DIGEST = re.compile(r'("\(generator\)": )"[^"]*"')


def normalise(rel: str, content: bytes) -> bytes:
    """The generator's own digest changes with every edit of generator/: keep it out."""
    if rel == "manifest.json":
        return GENERATOR_DIGEST.sub(r'\1"<generator digest>"', content.decode()).encode()
    return content


def build_case(case: str, tmp_path: Path, cache: Path) -> dict[str, bytes]:
    """Build a corpus case as ``tmp_path/app`` from ``tmp_path/schemas``; files or errors."""
    shutil.copytree(CORPUS / case, tmp_path / "schemas")
    out = tmp_path / "app"
    try:
        build(tmp_path / "schemas", out, tmp_path, cache)
    except BuildError as exc:
        assert not out.exists(), "a failed build must not create the output folder"
        text = "".join(p.render(tmp_path) + "\n" for p in exc.problems)
        return {"errors.txt": text.encode()}
    return {rel: normalise(rel, data) for rel, data in snapshot(out).items()}


def _diff(rel: str, expected: bytes, actual: bytes) -> str:
    lines = difflib.unified_diff(expected.decode().splitlines(keepends=True),
                                 actual.decode().splitlines(keepends=True),
                                 f"golden/{rel}", f"built/{rel}", n=2)
    return "".join(list(lines)[:80])


@pytest.mark.parametrize("case", CASES)
def test_corpus_case_matches_golden(case: str, tmp_path: Path, model_cache: Path,
                                    refresh_golden: bool) -> None:
    actual = build_case(case, tmp_path, model_cache)
    golden_dir = GOLDEN / case
    if refresh_golden:
        shutil.rmtree(golden_dir, ignore_errors=True)
        for rel, data in actual.items():
            target = golden_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return
    assert golden_dir.is_dir(), (f"no golden output for {case}; create it with "
                                 "REACTGEN_REFRESH_GOLDEN=1 pytest tests/generator")
    expected = snapshot(golden_dir)
    problems = [f"missing from the build: {rel}" for rel in sorted(set(expected) - set(actual))]
    problems += [f"not in the golden files: {rel}" for rel in sorted(set(actual) - set(expected))]
    problems += [_diff(rel, expected[rel], actual[rel])
                 for rel in sorted(set(expected) & set(actual)) if expected[rel] != actual[rel]]
    assert not problems, (f"{case}: output differs from tests/generator/golden/{case} (refresh "
                          "with REACTGEN_REFRESH_GOLDEN=1 if intended):\n" + "\n".join(problems))


def test_every_corpus_case_has_a_golden() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()
                  if p.is_dir() and not p.name.startswith(".")) == CASES


def test_colliding_names_are_rejected_naming_both_files() -> None:
    errors = (GOLDEN / "colliding_rejected" / "errors.txt").read_text()
    assert "sync_orders" in errors
    assert "Sync.Orders.reactor.yaml" in errors and "sync-orders.reactor.yaml" in errors
    assert "fix: give one of them a different 'name'" in errors


def test_colliding_names_are_sanitised_into_unique_identifiers() -> None:
    module = (GOLDEN / "colliding_sanitised" / "reactors" / "order.py").read_text()
    assert "class OrderWatchedValues(BaseModel):" in module
    for attribute in ("a_b:", "a_b_1:", "a_b_2:", "field_model_config:", "schema_:"):
        assert f"\n    {attribute}" in module, attribute
