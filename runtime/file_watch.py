"""Polling file watcher for the development loop: snapshots of modification times, compared.

No dependency and no platform API: a snapshot is one ``stat`` per file, cheap for the few
hundred files of a definitions folder and a handlers package.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

Snapshot = dict[Path, tuple[int, int]]
"""File -> (modification time in ns, size)."""

SKIPPED_PARTS = ("__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache")


def _skipped(path: Path) -> bool:
    """Caches, hidden files and editor droppings (``.#x``, ``x~``, ``x.swp``)."""
    return (any(part in SKIPPED_PARTS for part in path.parts) or path.name.startswith(".")
            or path.name.endswith(("~", ".swp", ".swx", ".tmp")))


@dataclass(frozen=True)
class Watch:
    """One folder to watch: every file below it whose name ends with one of ``suffixes``
    (all files if empty)."""

    folder: Path
    suffixes: tuple[str, ...] = ()

    def files(self) -> Iterable[Path]:
        """The files watched now (none if the folder does not exist)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.rglob("*"):
            if _skipped(path.relative_to(self.folder)):
                continue
            if self.suffixes and not path.name.endswith(self.suffixes):
                continue
            if path.is_file():
                yield path


def snapshot(watch: Watch) -> Snapshot:
    """Modification time and size of every watched file (files vanishing meanwhile are
    left out)."""
    taken: Snapshot = {}
    for path in watch.files():
        try:
            info = path.stat()
        except OSError:
            continue
        taken[path] = (info.st_mtime_ns, info.st_size)
    return taken


def changed(before: Snapshot, after: Snapshot) -> list[Path]:
    """Files added, removed or modified between two snapshots, sorted."""
    return sorted(path for path in before.keys() | after.keys()
                  if before.get(path) != after.get(path))
