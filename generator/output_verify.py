"""The last check of a build: every file about to be written is valid for its kind.

Python files must compile and JSON files must be strict JSON (no ``NaN``/``Infinity``). A file
that fails is a generator bug or a value the definitions' checks missed; either way the build
reports a problem and writes nothing, instead of printing "OK" over a package that cannot be
imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from generator.errors import Problem

_HINT = ("this is a generator bug (a definition value it should have refused): simplify the "
         "value named above or report it with the definition")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def output_problems(out: Path, files: dict[str, str]) -> list[Problem]:
    """A problem for each generated file (relative path -> text) that does not compile or
    parse."""
    problems: list[Problem] = []
    for rel, text in files.items():
        target = out / rel
        try:
            if rel.endswith(".py"):
                compile(text, str(target), "exec", dont_inherit=True)
            elif rel.endswith(".json"):
                json.loads(text, parse_constant=_no_constant)
        except SyntaxError as exc:
            problems.append(Problem(target, "", f"generated code does not compile: {exc.msg}",
                                    _HINT, exc.lineno))
        except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
            problems.append(Problem(target, "", f"generated file is invalid: {exc}", _HINT))
    return problems
