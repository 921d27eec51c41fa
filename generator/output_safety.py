"""What ``reactgen build`` may touch in its output folder.

``generated/`` is committed, so its ``manifest.json`` is input a pull request can change. A
build therefore deletes only files that the manifest lists with a generator-made name (such
as ``reactors/orders_sync.py``) and whose content still has the digest the manifest recorded:
files the generator itself wrote. Any other entry (``../x``, an absolute path, a name the
generator never produces, a file changed since) is left alone with a warning. Symbolic links in
the output folder (the folder itself, a subfolder or a file) are refused: writing or deleting
through one would touch files elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from generator.errors import BuildError, Problem

MANIFEST = "manifest.json"
OUTPUT_PATH = re.compile(
    r"(?:(?:crons|indexes|models|pipelines|reactors)/)?[a-z0-9_]+(?:\.mongosh)?"
    r"\.(?:py|json|js)")
"""Every relative path the generator writes (always matched with ``fullmatch``)."""
MODULE_NAME = re.compile(r"[a-z0-9_]+")


def content_digest(text: str) -> str:
    """The sha256 of a generated file's text, as the manifest records it."""
    return hashlib.sha256(text.encode()).hexdigest()


def is_output_path(rel: object) -> bool:
    """True for a relative path the generator could have written (no ``..``, not absolute)."""
    if not isinstance(rel, str) or not OUTPUT_PATH.fullmatch(rel):
        return False
    parts = PurePosixPath(rel).parts
    return not PurePosixPath(rel).is_absolute() and ".." not in parts


def symlink_in(out: Path, rel: str = "") -> Path | None:
    """The first symbolic link among ``out`` and the parts of ``out/rel`` that exist."""
    current = out
    for part in ("", *PurePosixPath(rel).parts):
        current = current / part if part else current
        if current.is_symlink():
            return current
        if not current.exists():
            return None
    return None


def refuse_symlinks(out: Path, rels: Iterable[str]) -> None:
    """Raise a :class:`BuildError` naming every symbolic link the build would go through."""
    links: dict[Path, None] = {}
    for rel in ("", *rels):
        link = symlink_in(out, rel)
        if link is not None:
            links[link] = None
    if links:
        raise BuildError([Problem(link, "", "is a symbolic link; reactgen does not write or "
                                  "delete through links (the output could land outside the "
                                  "output folder)",
                                  "replace the link with a real folder or file (or delete it) "
                                  "and build again")
                          for link in links])


@dataclass
class PreviousOutputs:
    """The outputs a previous build recorded that this build may replace or delete."""

    digests: dict[str, str] = field(default_factory=dict)
    """Relative path -> recorded sha256, only for safe, generator-made paths."""
    warnings: list[str] = field(default_factory=list)


def previous_outputs(out: Path) -> PreviousOutputs:
    """Safe entries of the previous manifest's ``outputs`` (warnings for the others)."""
    result = PreviousOutputs()
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        outputs = manifest.get("outputs", {}) if isinstance(manifest, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return result
    if not isinstance(outputs, dict):
        result.warnings.append(f"{out.name}/{MANIFEST}: 'outputs' is not a mapping; ignored")
        return result
    for rel, digest in outputs.items():
        if not is_output_path(rel) or not isinstance(digest, str):
            result.warnings.append(f"{out.name}/{MANIFEST}: ignoring the output entry "
                                   f"{str(rel)[:120]!r}: not a file name the generator writes "
                                   "(it will not be deleted)")
            continue
        result.digests[rel] = digest
    return result


def deletable(out: Path, rel: str, digest: str) -> str | None:
    """Why the stale output ``out/rel`` must be kept, or None when it may be deleted."""
    target = out / rel
    if symlink_in(out, rel) is not None:
        return "it is (or lies under) a symbolic link"
    if not target.is_file():
        return "it is not a regular file"
    try:
        current = content_digest(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return "it cannot be read"
    if current != digest:
        return "it changed since the generator wrote it"
    return None


def write_file(path: Path, content: str) -> None:
    """Write ``content`` atomically (temporary file and rename), never through a link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover (or a planted link) is removed, not followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(tmp, flags, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.replace(tmp, path)
