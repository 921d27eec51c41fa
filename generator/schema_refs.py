"""Where a definition's ``schema: {$ref: ...}`` may point, and which ``$ref`` a document
schema may hold.

A reference is a relative path from the definition file to a schema file inside the schemas
folder (or inside a folder allowed with ``reactgen build --allow-ref-outside DIR``). Absolute
paths, URLs, control characters, over-long paths and anything resolving elsewhere (``..``,
symlinks) are problems. Inside a document schema only local references (``#/$defs/...``) are
allowed: the model generator would otherwise read (or fetch) whatever they name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")
MAX_REF_LENGTH = 255
"""Longest ``$ref`` accepted (a file name, or a short relative path)."""
ALLOW_OUTSIDE_OPTION = "--allow-ref-outside"


@dataclass(frozen=True)
class RefError(Exception):
    """A ``$ref`` that may not be followed: what is wrong and how to fix it."""

    message: str
    hint: str


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_ref_text(ref: str) -> None:
    """Refuse a reference that is not a short relative path (raises :class:`RefError`)."""
    hint = "write a relative path to the schema file, such as order.schema.json"
    if any(ord(char) < 32 or ord(char) == 127 for char in ref):
        raise RefError("the $ref contains a control character (such as NUL or a line break)",
                       hint)
    if len(ref) > MAX_REF_LENGTH:
        raise RefError(f"the $ref is {len(ref)} characters long (at most {MAX_REF_LENGTH})",
                       hint + ", or rename the file")
    if not ref.strip():
        raise RefError("the $ref is empty", hint)
    if _URL.match(ref):
        raise RefError(f"the $ref {ref!r} looks like a URL; only local files are read", hint)
    if PurePosixPath(ref).is_absolute() or PureWindowsPath(ref).is_absolute() or ref.startswith(
            "\\"):
        raise RefError(f"the $ref {ref!r} is an absolute path", hint + " (relative to the "
                       "definition file)")


def resolve_ref(definition_file: Path, ref: str, roots: Sequence[Path]) -> Path:
    """The schema file ``ref`` names, relative to ``definition_file``; it must lie inside one
    of ``roots`` (the schemas folder first) after resolving ``..`` and symlinks.

    Raises :class:`RefError`.
    """
    check_ref_text(ref)
    try:
        target = (definition_file.parent / ref).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise RefError(f"the $ref {ref!r} cannot be resolved: {exc}",
                       "write a relative path to an existing schema file") from exc
    folders = [root.resolve() for root in roots]
    if not any(_inside(target, folder) for folder in folders):
        raise RefError(f"the $ref {ref!r} resolves to {target}, outside the schemas folder "
                       f"{folders[0] if folders else definition_file.parent}",
                       "move the schema file into the schemas folder, or allow its folder "
                       f"explicitly with `reactgen build {ALLOW_OUTSIDE_OPTION} DIR`")
    return target


def external_ref(schema: Any) -> tuple[str, str] | None:
    """The JSON pointer and value of the first ``$ref`` in a document schema that is not a
    local reference (``#...``), or None. Walked iteratively (schemas are bounded by then)."""
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, pointer = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                return f"{pointer}/$ref", ref
            for key, value in reversed(list(node.items())):
                token = str(key).replace("~", "~0").replace("/", "~1")
                stack.append((value, f"{pointer}/{token}"))
        elif isinstance(node, list):
            stack.extend((value, f"{pointer}/{index}")
                         for index, value in reversed(list(enumerate(node))))
    return None
