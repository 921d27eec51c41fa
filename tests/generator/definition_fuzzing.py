"""Mutated definitions for the generator's fuzzers (``test_generator_fuzz.py`` and
``bench/fuzz_definitions.py``): the seeds, the hostile values, and one build checked for the
only acceptable outcomes (problems, or output that compiles and stays in its folder)."""

from __future__ import annotations

import copy
import importlib
import math
import random
import shutil
import sys
import traceback
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from generator.build import build
from generator.errors import BuildError

REPO = Path(__file__).resolve().parents[2]
SEED_FOLDERS = sorted([p for p in (REPO / "tests" / "generator" / "corpus").iterdir()
                       if p.is_dir()] + [REPO / "schemas" / "shop"])
DEFINITION_SUFFIXES = (".reactor.yaml", ".reactor.yml", ".reactor.json", ".cron.yaml")

HOSTILE_VALUES: list[Any] = [
    math.inf, -math.inf, math.nan, 10**30, -(10**19), 2**63, 1e308, 0, -1, 1.5, "", " ",
    "orders\n", "a\x00b", "$where", "$$NOW", "$", "$x.y", "../outside.json", "/etc/passwd",
    "x" * 300, "é" * 50, "'; import os #", '"""', "\\", None, True, False, [], {}, [[[]]],
    {"$oid": "x"}, {"$date": {"$numberLong": "99999999999999999999"}}, {"$date": "nope"},
    {"$numberDecimal": "abc"}, {"$numberDouble": "NaN"}, {"$numberDouble": "Infinity"},
    {"$literal": "x"}, {"$ref": "../outside.json"}, {"$ref": "\x00"}, {"$ref": "#/nope"},
    {"a": {"b": {"c": {"d": 1}}}}, {"$gt": []}, {"$expr": 5}, {"$in": 5}, {"$let": 5},
    {"$regex": 5}, {"type": "object", "properties": {"a": True}}, "10s", "0ms", "1h30m",
    "*/5 * * * *", "nonsense cron", {"every": "0s"},
]
HOSTILE_KEYS: list[str] = ["$where", "$expr", "", "a.b", "$", "x\n", "_id", "model_config",
                           "class", "schema", "__init__", "trigger", "filter", "name", "\x00"]
HOSTILE_TEXT = ["{", "}", "[", "]", ":", "-", "&a", "*a", "!!python/object:os.system", "?",
                "\t", "\n", " ", "'", '"', "#", "|", ">", "%", "@", "`", "!!binary", "<<: *a",
                "\x00", "\ufeff", "9" * 30, ".inf", ".nan", "~", "null", "{a: 1}"]


class Outcome(Enum):
    """What one mutated definition did to a build."""

    BUILT = "built"
    PROBLEMS = "problems (expected)"
    CRASH = "crashes (tracebacks)"
    BROKEN_OUTPUT = "OK builds whose output does not compile or import"
    OUTSIDE_WRITE = "writes outside the output folder"
    HANG = "hangs"


@dataclass(frozen=True)
class Seed:
    """A definition file of a seed folder, and the folder (copied with its schemas)."""

    folder: Path
    rel: str

    @property
    def text(self) -> str:
        return (self.folder / self.rel).read_text(encoding="utf-8")


def seeds() -> list[Seed]:
    """Every definition of the corpus and of ``schemas/``."""
    found = []
    for folder in SEED_FOLDERS:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name.endswith(DEFINITION_SUFFIXES):
                found.append(Seed(folder, path.relative_to(folder).as_posix()))
    return found


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (tuple of keys/indexes) to a value inside ``data``."""
    found: list[tuple[Any, ...]] = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(_paths(value, (*prefix, index)))
    return found


def replace_value(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``data`` with the value at ``path`` replaced (the root if ``path`` is empty)."""
    if not path:
        return value
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return data


def insert_key(data: Any, path: tuple[Any, ...], key: str, value: Any) -> Any:
    """``data`` with ``key: value`` added to the mapping at ``path`` (if it is one)."""
    target = data
    for step in path:
        target = target[step]
    if isinstance(target, dict):
        target[key] = value
    return data


def mutate_text(text: str, rng: random.Random, edits: int) -> str:
    """``text`` with ``edits`` random insertions, deletions and replacements."""
    chars = list(text)
    for _ in range(edits):
        position = rng.randrange(len(chars) + 1)
        action = rng.random()
        piece = rng.choice(HOSTILE_TEXT) if rng.random() < 0.7 else chr(rng.randrange(32, 127))
        if action < 0.4:
            chars[position:position] = list(piece)
        elif action < 0.7 and chars:
            del chars[position:position + rng.randint(1, 8)]
        else:
            chars[position:position + 1] = list(piece)
    return "".join(chars)


def dump(data: Any, as_json: bool) -> str:
    """Definition text (JSON for .json seeds, YAML otherwise), even for non-finite floats."""
    if as_json:
        import json

        return json.dumps(data, allow_nan=True)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def mutate(seed: Seed, rng: random.Random) -> str:
    """One mutated version of a seed definition (text, value or key mutations)."""
    text = seed.text
    kind = rng.random()
    if kind < 0.35:
        return mutate_text(text, rng, rng.randint(1, 6))
    data = yaml.safe_load(text)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(data))
        value = rng.choice(HOSTILE_VALUES)
        value = copy.deepcopy(value)
        if kind < 0.75:
            data = replace_value(data, path, value)
        else:
            data = insert_key(data, path, rng.choice(HOSTILE_KEYS), value)
    return dump(data, seed.rel.endswith(".json"))


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _files(root: Path, skip: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not _inside(p, skip)}


PACKAGE = "fuzzed_app"
"""The output folder (and package) name of every fuzzed build."""


def import_all(project: Path, out: Path) -> str | None:
    """Import every module of a generated package; the error, or None if all import.

    The package is removed from ``sys.modules`` afterwards, so the next case starts clean.
    """
    sys.path.insert(0, str(project))
    try:
        for path in sorted(out.rglob("*.py")):
            if path.parent.name == "handlers" and path.name != "__init__.py":
                continue  # stubs are the user's code
            parts = path.relative_to(project).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            try:
                importlib.import_module(module)
            except Exception as exc:  # any import failure is a broken output
                return f"{module}: {type(exc).__name__}: {exc}"
        return None
    finally:
        sys.path.remove(str(project))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        importlib.invalidate_caches()


def run_case(seed: Seed, text: str, workdir: Path, cache_dir: Path | None) -> tuple[
        Outcome, str]:
    """Build the seed folder with its definition replaced by ``text`` into
    ``workdir/project/fuzzed_app`` and import what was built.

    Returns the outcome and, for bad outcomes, the details (a traceback or the bad files).
    """
    project = workdir / "project"
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(seed.folder, project / "schemas")
    (project / "schemas" / seed.rel).write_text(text, encoding="utf-8")
    out = project / PACKAGE
    before = _files(workdir, out)
    try:
        build(project / "schemas", out, project, cache_dir)
    except BuildError:
        outcome, detail = Outcome.PROBLEMS, ""
    except Exception:  # anything else is exactly what the fuzzer looks for
        return Outcome.CRASH, traceback.format_exc()
    else:
        outcome, detail = Outcome.BUILT, ""
        for path in sorted(out.rglob("*")):
            if path.is_symlink() or not _inside(path, out):
                return Outcome.OUTSIDE_WRITE, str(path)
        broken = import_all(project, out)
        if broken is not None:
            return Outcome.BROKEN_OUTPUT, broken
    changed = [rel for rel, data in _files(workdir, out).items()
               if before.get(rel) != data and not rel.startswith("project/.reactgen/")
               and "__pycache__" not in rel]
    if changed:
        return Outcome.OUTSIDE_WRITE, ", ".join(changed[:5])
    return outcome, detail
